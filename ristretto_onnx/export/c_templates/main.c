/* Golden model driver (ristretto-onnx, thesis 9.7.3): ristretto_model IN.bin OUT.bin
 *
 * IN.bin holds N preprocessed inputs as little-endian float32 in the ONNX model's input layout
 * (RM_INPUT_SIZE values each); OUT.bin receives the N outputs as little-endian float32
 * (RM_OUTPUT_SIZE values each). One sample at a time through static buffers: no allocation.
 */

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ristretto_model.h"

#define RM_MAX_SIZE (RM_INPUT_SIZE > RM_OUTPUT_SIZE ? RM_INPUT_SIZE : RM_OUTPUT_SIZE)

static float in_buf[RM_INPUT_SIZE];
static float out_buf[RM_OUTPUT_SIZE];
static unsigned char bytes[4 * RM_MAX_SIZE];

static int fail(const char *what, const char *path, FILE *in, FILE *out, const char *out_path)
{
    fprintf(stderr, "error: %s: %s\n", path, what);
    if (in)
        fclose(in);
    if (out) {
        fclose(out);
        remove(out_path); /* never leave a partial output */
    }
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN.bin OUT.bin (little-endian float32, %d values in, %d out per sample)\n",
                argv[0], RM_INPUT_SIZE, RM_OUTPUT_SIZE);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in)
        return fail("cannot open for reading", argv[1], NULL, NULL, NULL);
    FILE *out = fopen(argv[2], "wb");
    if (!out)
        return fail("cannot open for writing", argv[2], in, NULL, NULL);
    for (;;) {
        size_t got = fread(bytes, 1, 4 * (size_t)RM_INPUT_SIZE, in);
        if (got == 0)
            break;
        if (got != 4 * (size_t)RM_INPUT_SIZE)
            return fail("size is not a whole number of inputs", argv[1], in, out, argv[2]);
        for (int i = 0; i < RM_INPUT_SIZE; ++i) {
            const unsigned char *b = bytes + 4 * i;
            uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
            memcpy(&in_buf[i], &u, 4);
        }
        ristretto_forward(in_buf, out_buf);
        for (int i = 0; i < RM_OUTPUT_SIZE; ++i) {
            uint32_t u;
            memcpy(&u, &out_buf[i], 4);
            for (int j = 0; j < 4; ++j)
                bytes[4 * i + j] = (unsigned char)(u >> (8 * j));
        }
        if (fwrite(bytes, 4, RM_OUTPUT_SIZE, out) != (size_t)RM_OUTPUT_SIZE)
            return fail("write failed", argv[2], in, out, argv[2]);
    }
    if (ferror(in))
        return fail("read failed", argv[1], in, out, argv[2]);
    fclose(in);
    if (fclose(out) != 0) {
        remove(argv[2]);
        fprintf(stderr, "error: %s: write failed\n", argv[2]);
        return 1;
    }
    return 0;
}
