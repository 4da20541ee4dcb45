/* Filter-bank responses at code-grid points only: per cell, n_orient dot products of the
 * window under the cell with the bank. Exact int32 arithmetic, so the NumPy reference
 * (palmnode/biometrics/kernels.py) reproduces every value. Built twice: a default (SSE2 on
 * x86-64) body and an AVX2 body, chosen at run time like the popcount kernels. */
#include "palmnode_native.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define PN_X86 1
#else
#define PN_X86 0
#endif

#define PN_INLINE static inline __attribute__((always_inline))
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

static void responses_default(const int16_t *img, size_t stride, const int16_t *bank,
                              int n_orient, int kh, int kw, int y0, int x0, int step,
                              int gh, int gw, int32_t *out)
{
    responses_body(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
}

#if PN_X86
__attribute__((target("avx2")))
static void responses_avx2(const int16_t *img, size_t stride, const int16_t *bank,
                           int n_orient, int kh, int kw, int y0, int x0, int step,
                           int gh, int gw, int32_t *out)
{
    responses_body(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
}
#endif

void pn_gabor_responses(const int16_t *img, size_t stride, const int16_t *bank, int n_orient,
                        int kh, int kw, int y0, int x0, int step, int gh, int gw, int32_t *out)
{
#if PN_X86
    if (pn_dispatch_level(-1) >= 2) {
        responses_avx2(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
        return;
    }
#endif
    responses_default(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
}
