/* Filter-bank responses at code-grid points only: per cell, n_orient dot products of the
 * window under the cell with the bank. Exact int32 arithmetic, so the NumPy reference
 * (palmnode/biometrics/kernels.py) reproduces every value. Three builds chosen at run time like
 * the popcount kernels: plain C (level 0), SSE2 pmaddwd (level 1: baseline x86-64), the same
 * compiled for AVX2 (level 2). */
#include "palmnode_native.h"

#define PN_MAX_ORIENT 16

PN_INLINE void responses_body(const int16_t *img, size_t stride, const int16_t *bank,
                              int n_orient, int kh, int kw, int y0, int x0, int step,
                              int gh, int gw, int32_t *out)
{
    const size_t taps = (size_t)kh * (size_t)kw;
    for (int i = 0; i < gh; i++) {
        for (int j = 0; j < gw; j++) {
            const int16_t *win = img + (size_t)(y0 + i * step) * stride + (size_t)(x0 + j * step);
            int32_t acc[PN_MAX_ORIENT];
            for (int o = 0; o < n_orient; o++) acc[o] = 0;
            for (int r = 0; r < kh; r++) {
                const int16_t *row = win + (size_t)r * stride;
                for (int o = 0; o < n_orient; o++) {
                    const int16_t *k = bank + (size_t)o * taps + (size_t)r * kw;
                    int32_t s = 0;
                    for (int c0 = 0; c0 < kw; c0 += 8) {
                        /* fixed 8-wide block: vectorises to pmaddwd */
                        for (int c = 0; c < 8; c++) s += (int32_t)row[c0 + c] * (int32_t)k[c0 + c];
                    }
                    acc[o] += s;
                }
            }
            int32_t *dst = out + ((size_t)i * gw + j) * n_orient;
            for (int o = 0; o < n_orient; o++) dst[o] = acc[o];
        }
    }
}

#if PN_X86

static inline int32_t hsum128(__m128i v)
{
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(v);
}

/* One window row segment of 8 pixels is loaded once and multiplied (pmaddwd) with the same
 * segment of every filter: 6 accumulators of 4 int32 lanes; exact integer sums. */
#define PN_SIMD_BODY(ATTR, NAME)                                                             \
    ATTR static void NAME(const int16_t *img, size_t stride, const int16_t *bank,           \
                          int n_orient, int kh, int kw, int y0, int x0, int step,          \
                          int gh, int gw, int32_t *out)                                     \
    {                                                                                       \
        const size_t taps = (size_t)kh * (size_t)kw;                                        \
        for (int i = 0; i < gh; i++) {                                                      \
            for (int j = 0; j < gw; j++) {                                                  \
                const int16_t *win = img + (size_t)(y0 + i * step) * stride                 \
                                     + (size_t)(x0 + j * step);                             \
                __m128i acc[PN_MAX_ORIENT];                                                 \
                for (int o = 0; o < n_orient; o++) acc[o] = _mm_setzero_si128();            \
                for (int r = 0; r < kh; r++) {                                              \
                    const int16_t *row = win + (size_t)r * stride;                          \
                    for (int c0 = 0; c0 < kw; c0 += 8) {                                    \
                        __m128i px = _mm_loadu_si128((const __m128i *)(row + c0));          \
                        const int16_t *k = bank + (size_t)r * kw + c0;                      \
                        for (int o = 0; o < n_orient; o++) {                                \
                            __m128i t = _mm_loadu_si128((const __m128i *)(k + o * taps));   \
                            acc[o] = _mm_add_epi32(acc[o], _mm_madd_epi16(px, t));          \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
                int32_t *dst = out + ((size_t)i * gw + j) * n_orient;                       \
                for (int o = 0; o < n_orient; o++) dst[o] = hsum128(acc[o]);                \
            }                                                                               \
        }                                                                                   \
    }

PN_SIMD_BODY(, responses_sse2)
PN_SIMD_BODY(__attribute__((target("avx2"))), responses_avx2)
#endif

static void responses_default(const int16_t *img, size_t stride, const int16_t *bank,
                              int n_orient, int kh, int kw, int y0, int x0, int step,
                              int gh, int gw, int32_t *out)
{
    responses_body(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
}

void pn_gabor_responses(const int16_t *img, size_t stride, const int16_t *bank, int n_orient,
                        int kh, int kw, int y0, int x0, int step, int gh, int gw, int32_t *out)
{
#if PN_X86
    int lv = pn_dispatch_level(-1);
    if (lv >= 2) {
        responses_avx2(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
        return;
    }
    if (lv >= 1) {
        responses_sse2(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
        return;
    }
#endif
    responses_default(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
}
