/* Filter-bank responses at code-grid points only: per cell, n_orient dot products of the
 * window under the cell with the bank. Exact int32 arithmetic, so the NumPy reference
 * (palmnode/biometrics/kernels.py) reproduces every value. Three builds chosen at run time like
 * the popcount kernels: plain C (level 0), SSE2 pmaddwd (level 1: baseline x86-64), AVX2
 * (level 2: 16 taps per vpmaddwd; the last 8 columns of two window rows share one register). */
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
PN_SIMD_BODY(__attribute__((target("avx2"))), responses_avx2_128)

#define PN_AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))
/* window rows (kh) up to which the AVX2 path stages the banks' last 8 columns on the stack */
#define PN_TAIL_MAX_KH 64
/* orientations one pass over a window accumulates (one ymm register each) */
#define PN_PASS_ORIENT 6

PN_AVX2_INLINE int32_t hsum256(__m256i v)
{
    return hsum128(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

/* Orientations o0 .. o0+no-1 of one window. Columns in blocks of 16 (one vpmaddwd each); when
 * kw is an odd multiple of 8, the last 8 columns of rows 2p and 2p+1 go together in one
 * register against `tails` (those columns of the bank, staged in the same row pairs, row kh
 * zero). Integer sums in any order are exact: the result equals the plain C path's. */
PN_AVX2_INLINE void cell_avx2(const int16_t *win, size_t stride, const int16_t *bank,
                              const int16_t *tails, int kh, int kw, int o0, const int no,
                              int32_t *dst)
{
    const size_t taps = (size_t)kh * (size_t)kw;
    const int blocks = kw / 16, pairs = (kh + 1) / 2;
    __m256i acc[PN_PASS_ORIENT];
    for (int o = 0; o < no; o++) acc[o] = _mm256_setzero_si256();
    for (int r = 0; r < kh; r++) {
        const int16_t *row = win + (size_t)r * stride;
        const int16_t *k = bank + (size_t)o0 * taps + (size_t)r * kw;
        for (int b = 0; b < blocks; b++) {
            __m256i px = _mm256_loadu_si256((const __m256i *)(row + 16 * b));
            for (int o = 0; o < no; o++) {
                __m256i t = _mm256_loadu_si256((const __m256i *)(k + o * taps + 16 * b));
                acc[o] = _mm256_add_epi32(acc[o], _mm256_madd_epi16(px, t));
            }
        }
    }
    if (kw & 8) {
        for (int p = 0; p < pairs; p++) {
            const int16_t *row = win + (size_t)(2 * p) * stride + (kw - 8);
            __m128i lo = _mm_loadu_si128((const __m128i *)row);
            __m128i hi = 2 * p + 1 < kh ? _mm_loadu_si128((const __m128i *)(row + stride)) : _mm_setzero_si128();
            __m256i px = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
            const int16_t *k = tails + ((size_t)o0 * pairs + p) * 16;
            for (int o = 0; o < no; o++) {
                __m256i t = _mm256_loadu_si256((const __m256i *)(k + (size_t)o * pairs * 16));
                acc[o] = _mm256_add_epi32(acc[o], _mm256_madd_epi16(px, t));
            }
        }
    }
    for (int o = 0; o < no; o++) dst[o] = hsum256(acc[o]);
}

__attribute__((target("avx2")))
static void responses_avx2(const int16_t *img, size_t stride, const int16_t *bank,
                           int n_orient, int kh, int kw, int y0, int x0, int step,
                           int gh, int gw, int32_t *out)
{
    if (kh > PN_TAIL_MAX_KH) {
        responses_avx2_128(img, stride, bank, n_orient, kh, kw, y0, x0, step, gh, gw, out);
        return;
    }
    int16_t tails[PN_MAX_ORIENT * ((PN_TAIL_MAX_KH + 1) / 2) * 16];
    const int pairs = (kh + 1) / 2;
    const size_t taps = (size_t)kh * (size_t)kw;
    if (kw & 8) {
        for (int o = 0; o < n_orient; o++)
            for (int p = 0; p < pairs; p++)
                for (int h = 0; h < 2; h++)
                    for (int c = 0; c < 8; c++)
                        tails[((size_t)o * pairs + p) * 16 + h * 8 + c] =
                            2 * p + h < kh ? bank[(size_t)o * taps + (size_t)(2 * p + h) * kw + kw - 8 + c] : 0;
    }
    for (int i = 0; i < gh; i++) {
        for (int j = 0; j < gw; j++) {
            const int16_t *win = img + (size_t)(y0 + i * step) * stride + (size_t)(x0 + j * step);
            int32_t *dst = out + ((size_t)i * gw + j) * n_orient;
            for (int o0 = 0; o0 < n_orient; o0 += PN_PASS_ORIENT) {
                switch (n_orient - o0 < PN_PASS_ORIENT ? n_orient - o0 : PN_PASS_ORIENT) {
                case 6: cell_avx2(win, stride, bank, tails, kh, kw, o0, 6, dst + o0); break;
                case 5: cell_avx2(win, stride, bank, tails, kh, kw, o0, 5, dst + o0); break;
                case 4: cell_avx2(win, stride, bank, tails, kh, kw, o0, 4, dst + o0); break;
                case 3: cell_avx2(win, stride, bank, tails, kh, kw, o0, 3, dst + o0); break;
                case 2: cell_avx2(win, stride, bank, tails, kh, kw, o0, 2, dst + o0); break;
                default: cell_avx2(win, stride, bank, tails, kh, kw, o0, 1, dst + o0); break;
                }
            }
        }
    }
}
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
