/* Integer kernels of the golden model (ristretto-onnx, thesis 5.1 and 9.7.3).
 *
 * Every activation is an int32_t mantissa k of a dynamic fixed point number k * 2^-FL; layer
 * accumulators are int64_t. A layer sums int32 products of its input and weight mantissas in an
 * int32 accumulator (the export proves it cannot overflow), widens the sum, appends the bias's
 * guard bits and adds the bias, all in the accumulator's fixed point. The output is re-quantized
 * by rne(v * L / D) -- for a plain shift L = 1, D = 2^s -- rounded half to even, then saturated.
 * No function allocates memory; all buffers are static and sized at export time.
 */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* floor(a / d) for d > 0 (C division truncates toward zero) */
static inline int64_t rm_floor_div(int64_t a, int64_t d)
{
    int64_t q = a / d;
    if (a % d < 0)
        q -= 1;
    return q;
}

/* rne(v / d) for d > 0: round half to even, negative values included */
static inline int64_t rm_rne_div(int64_t v, int64_t d)
{
    int64_t q = rm_floor_div(v, d);
    int64_t r2 = 2 * (v - q * d);
    if (r2 > d || (r2 == d && q % 2 != 0))
        q += 1;
    return q;
}

static inline int64_t rm_sat(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* the first layer's input quantizer: k = sat(rne(x * 2^frac)); exact in double */
static inline void rm_quantize(const float *x, int32_t *y, int n, int frac, int32_t lo, int32_t hi)
{
    double scale = ldexp(1.0, frac);
    for (int i = 0; i < n; ++i) {
        double v = (double)x[i] * scale;
        double f = floor(v);
        double d = v - f;
        if (d > 0.5 || (d == 0.5 && fmod(f, 2.0) != 0.0))
            f += 1.0;
        if (!(f >= (double)lo)) /* also maps NaN to lo */
            f = (double)lo;
        if (f > (double)hi)
            f = (double)hi;
        y[i] = (int32_t)f;
    }
}

/* 2-D convolution (grouped and depthwise included) with the bias in the accumulator. Loop order
 * is weight-stationary: each weight is multiplied into the int32 accumulator plane `acc` (OH*OW,
 * a static scratch buffer) over the output positions whose input tap lies inside the image;
 * padding contributes nothing. */
static inline int rm_ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
static inline int rm_floor_div_i(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

#define RM_CONV(NAME, WT)                                                                         \
    static inline void NAME(const int32_t *x, int C, int H, int W, const WT *w, int M, int KH,   \
                            int KW, int SH, int SW, int PT, int PL, int DH, int DW, int G,        \
                            int OH, int OW, const int64_t *bias, int guard, int32_t *acc,         \
                            int64_t *y)                                                           \
    {                                                                                             \
        int cg = C / G, mg = M / G;                                                               \
        for (int m = 0; m < M; ++m) {                                                             \
            const WT *wm = w + (size_t)m * cg * KH * KW;                                          \
            const int32_t *xg = x + (size_t)(m / mg) * cg * H * W;                                \
            for (int i = 0; i < OH * OW; ++i)                                                     \
                acc[i] = 0;                                                                       \
            for (int c = 0; c < cg; ++c) {                                                        \
                const int32_t *xc = xg + (size_t)c * H * W;                                       \
                for (int kh = 0; kh < KH; ++kh) {                                                 \
                    int oh0 = rm_ceil_div(PT - kh * DH, SH), oh1 = rm_floor_div_i(H - 1 + PT - kh * DH, SH); \
                    if (oh0 < 0) oh0 = 0;                                                         \
                    if (oh1 > OH - 1) oh1 = OH - 1;                                               \
                    for (int kw = 0; kw < KW; ++kw) {                                             \
                        int32_t wv = (int32_t)wm[((size_t)c * KH + kh) * KW + kw];                \
                        int ow0 = rm_ceil_div(PL - kw * DW, SW), ow1 = rm_floor_div_i(W - 1 + PL - kw * DW, SW); \
                        if (ow0 < 0) ow0 = 0;                                                     \
                        if (ow1 > OW - 1) ow1 = OW - 1;                                           \
                        if (wv == 0)                                                              \
                            continue;                                                             \
                        for (int oh = oh0; oh <= oh1; ++oh) {                                     \
                            const int32_t *xr = xc + (size_t)(oh * SH - PT + kh * DH) * W + (kw * DW - PL); \
                            int32_t *ar = acc + (size_t)oh * OW;                                  \
                            if (SW == 1)                                                          \
                                for (int ow = ow0; ow <= ow1; ++ow)                               \
                                    ar[ow] += xr[ow] * wv;                                        \
                            else                                                                  \
                                for (int ow = ow0; ow <= ow1; ++ow)                               \
                                    ar[ow] += xr[ow * SW] * wv;                                   \
                        }                                                                         \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
            for (int i = 0; i < OH * OW; ++i)                                                     \
                y[(size_t)m * OH * OW + i] = (int64_t)acc[i] * ((int64_t)1 << guard) + bias[m];   \
        }                                                                                         \
    }

/* fully connected layer: y[m] = sum_k x[k] * w[m][k], then the bias */
#define RM_FC(NAME, WT)                                                                           \
    static inline void NAME(const int32_t *x, int K, const WT *w, int M, const int64_t *bias,    \
                            int guard, int64_t *y)                                                \
    {                                                                                             \
        for (int m = 0; m < M; ++m) {                                                             \
            const WT *wm = w + (size_t)m * K;                                                     \
            int32_t acc = 0;                                                                      \
            for (int k = 0; k < K; ++k)                                                           \
                acc += x[k] * (int32_t)wm[k];                                                     \
            y[m] = (int64_t)acc * ((int64_t)1 << guard) + bias[m];                                \
        }                                                                                         \
    }

RM_CONV(rm_conv_w8, int8_t)
RM_CONV(rm_conv_w16, int16_t)
RM_FC(rm_fc_w8, int8_t)
RM_FC(rm_fc_w16, int16_t)

/* element-wise kernels, one per mantissa type; channel c = (i / inner) % nch */
#define RM_ELEMENTWISE(SUF, T)                                                                    \
    static inline void rm_requant##SUF(const T *x, int32_t *y, int n, int inner, int nch,        \
                                       const int64_t *L, const int64_t *D, int32_t lo, int32_t hi) \
    {                                                                                             \
        for (int i = 0; i < n; ++i) {                                                             \
            int c = nch > 1 ? (i / inner) % nch : 0;                                              \
            y[i] = (int32_t)rm_sat(rm_rne_div((int64_t)x[i] * L[c], D[c]), lo, hi);               \
        }                                                                                         \
    }                                                                                             \
    static inline void rm_addconst##SUF(const T *x, T *y, int n, int inner, int nch,             \
                                        const int64_t *k)                                         \
    {                                                                                             \
        for (int i = 0; i < n; ++i)                                                               \
            y[i] = (T)(x[i] + k[nch > 1 ? (i / inner) % nch : 0]);                                \
    }                                                                                             \
    static inline void rm_dequantize##SUF(const T *x, float *y, int n, int inner, int nch,       \
                                          const double *scale, double div)                        \
    {                                                                                             \
        for (int i = 0; i < n; ++i) {                                                             \
            double v = (double)x[i] * scale[nch > 1 ? (i / inner) % nch : 0];                     \
            y[i] = (float)(div != 1.0 ? v / div : v);                                             \
        }                                                                                         \
    }

RM_ELEMENTWISE(_32, int32_t)
RM_ELEMENTWISE(_64, int64_t)

static inline void rm_relu(const int32_t *x, int32_t *y, int n)
{
    for (int i = 0; i < n; ++i)
        y[i] = x[i] > 0 ? x[i] : 0;
}

static inline void rm_clip(const int32_t *x, int32_t *y, int n, int32_t lo, int32_t hi)
{
    for (int i = 0; i < n; ++i)
        y[i] = (int32_t)rm_sat(x[i], lo, hi);
}

/* y = a * la + b * lb: a residual Add of two tensors aligned by left shifts */
static inline void rm_add(const int32_t *a, int32_t la, const int32_t *b, int32_t lb, int32_t *y, int n)
{
    for (int i = 0; i < n; ++i)
        y[i] = a[i] * la + b[i] * lb;
}

/* max (is_max) or sum over windows; padding never wins a max and adds 0 to a sum */
static inline void rm_pool(const int32_t *x, int32_t *y, int C, int H, int W, int KH, int KW,
                           int SH, int SW, int PT, int PL, int OH, int OW, int is_max)
{
    for (int c = 0; c < C; ++c) {
        const int32_t *xc = x + (size_t)c * H * W;
        for (int oh = 0; oh < OH; ++oh) {
            for (int ow = 0; ow < OW; ++ow) {
                int32_t v = is_max ? INT32_MIN : 0;
                for (int kh = 0; kh < KH; ++kh) {
                    int ih = oh * SH - PT + kh;
                    if (ih < 0 || ih >= H)
                        continue;
                    for (int kw = 0; kw < KW; ++kw) {
                        int iw = ow * SW - PL + kw;
                        if (iw < 0 || iw >= W)
                            continue;
                        if (is_max)
                            v = xc[ih * W + iw] > v ? xc[ih * W + iw] : v;
                        else
                            v += xc[ih * W + iw];
                    }
                }
                y[((size_t)c * OH + oh) * OW + ow] = v;
            }
        }
    }
}

/* concatenation along an axis: `outer` blocks, each input contributing `chunk` values times `mult` */
static inline int32_t *rm_concat_part(const int32_t *x, int32_t mult, int outer, int chunk,
                                      int32_t *y, int stride)
{
    for (int o = 0; o < outer; ++o)
        for (int i = 0; i < chunk; ++i)
            y[(size_t)o * stride + i] = x[(size_t)o * chunk + i] * mult;
    return y + chunk;
}

/* strided slice of a (D0, D1, D2) tensor: y[i][j][k] = x[s0 + i*t0][s1 + j*t1][s2 + k*t2] */
static inline void rm_slice(const int32_t *x, int D1, int D2, int32_t *y, int O0, int O1, int O2,
                            int s0, int s1, int s2, int t0, int t1, int t2)
{
    for (int i = 0; i < O0; ++i)
        for (int j = 0; j < O1; ++j)
            for (int k = 0; k < O2; ++k)
                y[((size_t)i * O1 + j) * O2 + k] =
                    x[((size_t)(s0 + i * t0) * D1 + (s1 + j * t1)) * D2 + (s2 + k * t2)];
}

/* zero padding of a (D0, D1, D2) tensor by b0, b1, b2 in front (output O0 x O1 x O2) */
static inline void rm_pad(const int32_t *x, int D0, int D1, int D2, int32_t *y, int O0, int O1,
                          int O2, int b0, int b1, int b2)
{
    for (size_t i = 0; i < (size_t)O0 * O1 * O2; ++i)
        y[i] = 0;
    for (int i = 0; i < D0; ++i)
        for (int j = 0; j < D1; ++j)
            for (int k = 0; k < D2; ++k)
                y[((size_t)(i + b0) * O1 + (j + b1)) * O2 + (k + b2)] = x[((size_t)i * D1 + j) * D2 + k];
}
