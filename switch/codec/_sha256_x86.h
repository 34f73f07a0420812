/* SHA-256's compression function (FIPS 180-4) on the x86 SHA extensions, for the frames'
 * HMAC (_frame_key.pyx). Only the compression is here: keyed states, padding and the digest
 * are the caller's. A CPU without the extensions, or another architecture, has
 * sha256_x86_available() == 0, and switch/codec/mac.py then tags with hashlib (OpenSSL)
 * instead: portable C measured no faster than that (0.77 against 0.72 us a tag). */
#ifndef SWITCH_SHA256_X86_H
#define SWITCH_SHA256_X86_H

#include <stddef.h>
#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* The SHA extensions' rounds, four at a time; the state kept as ABEF and CDGH as the
 * instructions want it. Each group of four message words after the first four is
 * msg2(msg1(W[t-16..], W[t-12..]) + W[t-7..], W[t-4..]), as FIPS 180-4's schedule. */
__attribute__((target("sha,sse4.1,ssse3")))
static void sha256_blocks_x86(uint32_t state[8], const uint8_t *data, size_t blocks)
{
    const __m128i byte_swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i state1 = _mm_loadu_si128((const __m128i *)&state[4]);
    __m128i state0;
    tmp = _mm_shuffle_epi32(tmp, 0xB1);             /* CDAB */
    state1 = _mm_shuffle_epi32(state1, 0x1B);       /* EFGH */
    state0 = _mm_alignr_epi8(tmp, state1, 8);       /* ABEF */
    state1 = _mm_blend_epi16(state1, tmp, 0xF0);    /* CDGH */
    while (blocks--) {
        __m128i abef = state0, cdgh = state1, w[4], msg;
        int group;
        for (group = 0; group < 16; group++) {
            __m128i *x = &w[group & 3];
            if (group < 4) {
                *x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * group)),
                                      byte_swap);
            } else {
                __m128i older = _mm_sha256msg1_epu32(w[group & 3], w[(group + 1) & 3]);
                older = _mm_add_epi32(older, _mm_alignr_epi8(w[(group + 3) & 3],
                                                             w[(group + 2) & 3], 4));
                *x = _mm_sha256msg2_epu32(older, w[(group + 3) & 3]);
            }
            msg = _mm_add_epi32(*x, _mm_loadu_si128((const __m128i *)&sha256_k[4 * group]));
            state1 = _mm_sha256rnds2_epu32(state1, state0, msg);
            state0 = _mm_sha256rnds2_epu32(state0, state1, _mm_shuffle_epi32(msg, 0x0E));
        }
        state0 = _mm_add_epi32(state0, abef);
        state1 = _mm_add_epi32(state1, cdgh);
        data += 64;
    }
    tmp = _mm_shuffle_epi32(state0, 0x1B);          /* FEBA */
    state1 = _mm_shuffle_epi32(state1, 0xB1);       /* DCHG */
    state0 = _mm_blend_epi16(tmp, state1, 0xF0);    /* DCBA */
    state1 = _mm_alignr_epi8(state1, tmp, 8);       /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], state0);
    _mm_storeu_si128((__m128i *)&state[4], state1);
}

static int sha256_x86_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    if (!(ecx & bit_SSSE3) || !(ecx & bit_SSE4_1))
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return (ebx >> 29) & 1;     /* SHA */
}
#else
/* Never called: no FrameKey of _frame_key.pyx is made where this is the one compiled. */
static void sha256_blocks_x86(uint32_t state[8], const uint8_t *data, size_t blocks)
{
    (void)state; (void)data; (void)blocks;
}
static int sha256_x86_available(void) { return 0; }
#endif

#endif
