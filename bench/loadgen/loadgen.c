/* The load loop of bench/e2e_load.py in C: signs on N connections to a switch (or a bare
 * server) and sends debits in closed loop (D in flight per connection) or as a Poisson stream
 * at an offered rate (open loop), so that the client costs far less per request than any
 * server it measures. It speaks docs/PROTOCOL.md §1-2 itself: length-prefixed msgpack frames
 * tagged with HMAC-SHA256 (written here: libc has none; SHA-256 with the CPU's SHA
 * extensions where it has them, portable C otherwise), hello with nonces, direction keys,
 * seq, and it checks every reply's tag as the Python client does.
 *
 * bench/e2e_load.py builds it (cc -O2, into build/loadgen/), writes the terminals and cards
 * to a file, runs it, reads its counts from stdout and its latencies from two files of native
 * doubles, and makes of them the same JSON as its own Python loop.
 *
 *   loadgen --host H --port P --spec FILE --connections N [--depth D | --rate R]
 *           --warmup S --seconds S --drain S --amount-max A --seed X
 *           [--server-pid PID] [--requests N] --latencies FILE --unanswered FILE
 *   loadgen --respond --spec FILE [--host H] --port P --lifetime S
 *                         the responder: listens (port 0: any), prints "listening on H:P",
 *                         answers this client as bench/bare_server.py does until SIGTERM or
 *                         the lifetime; what the client drives against it is its ceiling
 *   loadgen --hmac [auto|ni|portable]
 *                         stdin: lines "KEYHEX MSGHEX"; prints HMAC-SHA256 hex of each, with
 *                         the SHA-256 named (auto: the CPU's SHA extensions where it has them)
 *
 * The spec file has lines "terminal WHO KEYHEX" and "card CARD". Output lines (stdout):
 * "connected N", "code N CODE", "broken N REASON", "ok_in_window N", "sent_in_window N",
 * "unanswered N", "replies_after_window N", "timeline N N ...", "cpu ELAPSED SERVER LOAD
 * MACHINE KERNEL_THREADS" (seconds, "-" when unknown; KERNEL_THREADS is the CPU of the
 * kernel's own threads, such as the writeback of a server's fsync, within MACHINE).
 * Progress goes to stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The wire's bounds (switch/limits.py names them; docs/PROTOCOL.md §1.5). */
#define TAG_BYTES 16
#define NONCE_BYTES 16
#define FRAME_MIN 17
#define FRAME_MAX 65536
#define PROTOCOL_VERSION 1
/* The client's own, as bench/e2e_load.py's. */
#define CONNECT_BATCH 100
#define CONNECT_TIMEOUT_S 180.0
#define SOCKET_TIMEOUT_S 10
#define CLIENT_UNSENT_BYTES_MAX (4 * 1024 * 1024)
#define RECEIVE_BYTES (256 * 1024)
#define ID_STRIDE 1000000000000ULL
#define POLL_INTERVAL_MAX_S 0.05
#define EVENTS_MAX 1024
#define REASON_MAX 96
#define NESTING_MAX 8

/* ------------------------------------------------------------------ SHA-256 (FIPS 180-4) */
typedef struct {
    uint32_t h[8];
    uint64_t length;
    uint8_t block[64];
    size_t fill;
} sha256_state;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_compress_portable(uint32_t h[8], const uint8_t *block) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) +
                      K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_CODE 1

/* The same compression with the CPU's SHA extensions (Intel SHA-NI), four rounds per pair of
 * instructions: the portable loop was a fifth of the client's CPU per reply (perf), and the
 * client must stay far cheaper than the servers it measures. */
__attribute__((target("sha,sse4.1")))
static void sha256_compress_ni(uint32_t h[8], const uint8_t *block) {
    const __m128i big_endian = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1);
    __m128i cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B);
    __m128i state0 = _mm_alignr_epi8(dcba, cdgh, 8);          /* ABEF */
    __m128i state1 = _mm_blend_epi16(cdgh, dcba, 0xF0);       /* CDGH */
    const __m128i abef_in = state0, cdgh_in = state1;
    /* w[g % 4]: the four schedule words of group g, for the last four groups. */
    __m128i w[4];
    for (int g = 0; g < 4; g++)
        w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * g)), big_endian);
    for (int g = 0; g < 16; g++) {
        if (g >= 4) {
            /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time. */
            __m128i x = _mm_sha256msg1_epu32(w[g % 4], w[(g + 1) % 4]);
            x = _mm_add_epi32(x, _mm_alignr_epi8(w[(g + 3) % 4], w[(g + 2) % 4], 4));
            w[g % 4] = _mm_sha256msg2_epu32(x, w[(g + 3) % 4]);
        }
        __m128i m = _mm_add_epi32(w[g % 4], _mm_loadu_si128((const __m128i *)&K256[4 * g]));
        state1 = _mm_sha256rnds2_epu32(state1, state0, m);
        state0 = _mm_sha256rnds2_epu32(state0, state1, _mm_shuffle_epi32(m, 0x0E));
    }
    state0 = _mm_add_epi32(state0, abef_in);
    state1 = _mm_add_epi32(state1, cdgh_in);
    __m128i feba = _mm_shuffle_epi32(state0, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(state1, 0xB1);
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));   /* DCBA */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));      /* HGFE */
}

static int cpu_has_sha_ni(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1;   /* CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29] */
}
#else
#define HAVE_SHA_NI_CODE 0
static int cpu_has_sha_ni(void) { return 0; }
#endif

/* Chosen once in main(): the CPU's instructions where it has them. */
static void (*sha256_compress)(uint32_t h[8], const uint8_t *block) = sha256_compress_portable;

/* "auto", "ni" or "portable"; 0 if that one can run here. */
static int choose_sha256(const char *which) {
    if (!strcmp(which, "portable")) { sha256_compress = sha256_compress_portable; return 0; }
    int ni = cpu_has_sha_ni();
#if HAVE_SHA_NI_CODE
    if (ni) sha256_compress = sha256_compress_ni;
#endif
    if (!strcmp(which, "ni")) return ni ? 0 : -1;
    return strcmp(which, "auto") ? -1 : 0;
}

static void sha256_init(sha256_state *s) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, initial, sizeof initial);
    s->length = 0;
    s->fill = 0;
}

static void sha256_update(sha256_state *s, const uint8_t *data, size_t size) {
    s->length += size;
    if (s->fill) {
        size_t take = 64 - s->fill < size ? 64 - s->fill : size;
        memcpy(s->block + s->fill, data, take);
        s->fill += take; data += take; size -= take;
        if (s->fill < 64) return;
        sha256_compress(s->h, s->block);
        s->fill = 0;
    }
    for (; size >= 64; data += 64, size -= 64) sha256_compress(s->h, data);
    memcpy(s->block, data, size);
    s->fill = size;
}

static void sha256_final(sha256_state *s, uint8_t out[32]) {
    uint64_t bits = s->length * 8;
    s->block[s->fill++] = 0x80;
    if (s->fill > 56) {
        memset(s->block + s->fill, 0, 64 - s->fill);
        sha256_compress(s->h, s->block);
        s->fill = 0;
    }
    memset(s->block + s->fill, 0, 56 - s->fill);
    for (int i = 0; i < 8; i++) s->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_compress(s->h, s->block);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24); out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8); out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

/* ------------------------------------------------------------------ HMAC-SHA256 (RFC 2104) */
/* The key's padded blocks are hashed once per key, not once per frame. */
typedef struct {
    sha256_state inner, outer;
} hmac_key;

static void hmac_setup(hmac_key *k, const uint8_t *key, size_t size) {
    uint8_t block[64] = {0}, pad[64];
    if (size > 64) {
        sha256_state s;
        sha256_init(&s);
        sha256_update(&s, key, size);
        sha256_final(&s, block);
    } else {
        memcpy(block, key, size);
    }
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
    sha256_init(&k->inner);
    sha256_update(&k->inner, pad, 64);
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
    sha256_init(&k->outer);
    sha256_update(&k->outer, pad, 64);
}

static void hmac_digest(const hmac_key *k, const uint8_t *data, size_t size, uint8_t out[32]) {
    sha256_state s = k->inner;
    uint8_t inner[32];
    sha256_update(&s, data, size);
    sha256_final(&s, inner);
    s = k->outer;
    sha256_update(&s, inner, 32);
    sha256_final(&s, out);
}

/* ------------------------------------------------------------------ msgpack, the part we use */
typedef struct {
    uint8_t *p;
} writer;

static void put_byte(writer *w, uint8_t b) { *w->p++ = b; }

static void put_be(writer *w, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) *w->p++ = (uint8_t)(v >> (8 * i));
}

static void put_str(writer *w, const char *s, size_t n) {
    if (n < 32) put_byte(w, 0xa0 | (uint8_t)n);
    else if (n < 256) { put_byte(w, 0xd9); put_byte(w, (uint8_t)n); }
    else { put_byte(w, 0xda); put_be(w, n, 2); }
    memcpy(w->p, s, n);
    w->p += n;
}

static void put_cstr(writer *w, const char *s) { put_str(w, s, strlen(s)); }

static void put_bin(writer *w, const uint8_t *b, size_t n) {
    put_byte(w, 0xc4); put_byte(w, (uint8_t)n);
    memcpy(w->p, b, n);
    w->p += n;
}

static void put_uint(writer *w, uint64_t v) {
    if (v < 128) put_byte(w, (uint8_t)v);
    else if (v < 256) { put_byte(w, 0xcc); put_byte(w, (uint8_t)v); }
    else if (v < 65536) { put_byte(w, 0xcd); put_be(w, v, 2); }
    else if (v < 4294967296ULL) { put_byte(w, 0xce); put_be(w, v, 4); }
    else { put_byte(w, 0xcf); put_be(w, v, 8); }
}

typedef struct {
    const uint8_t *p, *end;
    int bad;
} reader;

static uint64_t get_be(reader *r, int bytes) {
    if (r->end - r->p < bytes) { r->bad = 1; r->p = r->end; return 0; }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = v << 8 | *r->p++;
    return v;
}

/* One value's type: 's' str, 'b' bin, 'i' int, 'm' map, 'a' array, 'n' nil/bool, 'x' other. */
typedef struct {
    char kind;
    int64_t integer;
    const uint8_t *bytes;
    size_t size;   /* str/bin length, map/array entries */
} item;

static item get_item(reader *r) {
    item it = {'x', 0, NULL, 0};
    if (r->p >= r->end) { r->bad = 1; return it; }
    uint8_t b = *r->p++;
    size_t n = 0;
    if (b < 0x80) { it.kind = 'i'; it.integer = b; return it; }
    if (b >= 0xe0) { it.kind = 'i'; it.integer = (int8_t)b; return it; }
    if ((b & 0xf0) == 0x80) { it.kind = 'm'; it.size = b & 0x0f; return it; }
    if ((b & 0xf0) == 0x90) { it.kind = 'a'; it.size = b & 0x0f; return it; }
    if ((b & 0xe0) == 0xa0) { it.kind = 's'; n = b & 0x1f; goto bytes; }
    switch (b) {
    case 0xc0: case 0xc2: case 0xc3: it.kind = 'n'; return it;
    case 0xc4: it.kind = 'b'; n = get_be(r, 1); goto bytes;
    case 0xc5: it.kind = 'b'; n = get_be(r, 2); goto bytes;
    case 0xc6: it.kind = 'b'; n = get_be(r, 4); goto bytes;
    case 0xd9: it.kind = 's'; n = get_be(r, 1); goto bytes;
    case 0xda: it.kind = 's'; n = get_be(r, 2); goto bytes;
    case 0xdb: it.kind = 's'; n = get_be(r, 4); goto bytes;
    case 0xcc: it.kind = 'i'; it.integer = (int64_t)get_be(r, 1); return it;
    case 0xcd: it.kind = 'i'; it.integer = (int64_t)get_be(r, 2); return it;
    case 0xce: it.kind = 'i'; it.integer = (int64_t)get_be(r, 4); return it;
    case 0xcf: it.kind = 'i'; it.integer = (int64_t)get_be(r, 8); return it;
    case 0xd0: it.kind = 'i'; it.integer = (int8_t)get_be(r, 1); return it;
    case 0xd1: it.kind = 'i'; it.integer = (int16_t)get_be(r, 2); return it;
    case 0xd2: it.kind = 'i'; it.integer = (int32_t)get_be(r, 4); return it;
    case 0xd3: it.kind = 'i'; it.integer = (int64_t)get_be(r, 8); return it;
    case 0xdc: it.kind = 'a'; it.size = get_be(r, 2); return it;
    case 0xdd: it.kind = 'a'; it.size = get_be(r, 4); return it;
    case 0xde: it.kind = 'm'; it.size = get_be(r, 2); return it;
    case 0xdf: it.kind = 'm'; it.size = get_be(r, 4); return it;
    default: r->bad = 1; return it;   /* floats and extensions appear nowhere (§1.2) */
    }
bytes:
    if ((size_t)(r->end - r->p) < n) { r->bad = 1; r->p = r->end; return it; }
    it.bytes = r->p;
    it.size = n;
    r->p += n;
    return it;
}

static void skip_item(reader *r, item it, int depth) {
    if (depth > NESTING_MAX) { r->bad = 1; return; }
    size_t children = it.kind == 'm' ? 2 * it.size : it.kind == 'a' ? it.size : 0;
    for (size_t i = 0; i < children && !r->bad; i++) skip_item(r, get_item(r), depth + 1);
}

static int item_is(item it, const char *text) {
    size_t n = strlen(text);
    return it.kind == 's' && it.size == n && memcmp(it.bytes, text, n) == 0;
}

/* The fields of a reply a load client reads. */
typedef struct {
    item t, code, nonce;
    int has_re;
    int64_t re;
} reply;

static int parse_reply(const uint8_t *body, size_t size, reply *out) {
    reader r = {body, body + size, 0};
    memset(out, 0, sizeof *out);
    item map = get_item(&r);
    if (map.kind != 'm') return -1;
    for (size_t i = 0; i < map.size && !r.bad; i++) {
        item key = get_item(&r);
        item value = get_item(&r);
        if (key.kind != 's') return -1;
        if (item_is(key, "t")) out->t = value;
        else if (item_is(key, "code")) out->code = value;
        else if (item_is(key, "nonce")) out->nonce = value;
        else if (item_is(key, "re") && value.kind == 'i') {
            out->has_re = 1;
            out->re = value.integer;
        }
        skip_item(&r, value, 1);
    }
    return r.bad || r.p != r.end ? -1 : 0;
}

/* ------------------------------------------------------------------ counters by name */
typedef struct {
    char name[REASON_MAX];
    uint64_t count;
} tally_entry;

typedef struct {
    tally_entry *entries;
    size_t size, cap;
} tally;

static void tally_add(tally *t, const char *name, uint64_t n) {
    for (size_t i = 0; i < t->size; i++)
        if (strcmp(t->entries[i].name, name) == 0) { t->entries[i].count += n; return; }
    if (t->size == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 8;
        t->entries = realloc(t->entries, t->cap * sizeof *t->entries);
        if (!t->entries) { perror("realloc"); exit(3); }
    }
    snprintf(t->entries[t->size].name, REASON_MAX, "%s", name);
    t->entries[t->size++].count = n;
}

/* A str item as a printable name, for the counters. */
static void item_text(item it, char *out, size_t cap) {
    if (it.kind == 's') {
        size_t n = it.size < cap - 1 ? it.size : cap - 1;
        for (size_t i = 0; i < n; i++)
            out[i] = it.bytes[i] > ' ' && it.bytes[i] < 127 ? (char)it.bytes[i] : '?';
        out[n] = 0;
    } else {
        snprintf(out, cap, "%s", it.kind == 'x' ? "None" : "?");
    }
}

/* ------------------------------------------------------------------ growing arrays */
typedef struct {
    double *values;
    size_t size, cap;
} doubles;

static void doubles_add(doubles *d, double v) {
    if (d->size == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 4096;
        d->values = realloc(d->values, d->cap * sizeof *d->values);
        if (!d->values) { perror("realloc"); exit(3); }
    }
    d->values[d->size++] = v;
}

/* ------------------------------------------------------------------ clocks and CPU */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double own_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A process's parent and utime + stime (ticks) from /proc/PID/stat; 0, or -1 when it
 * cannot be read (gone, say). */
static int read_stat(long pid, long *ppid, unsigned long long *ticks) {
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *p = strrchr(text, ')');
    unsigned long long utime, stime;
    /* After ")": state, ppid (4), fields 5..13, then utime (14) and stime (15). */
    if (!p || sscanf(p + 1, " %*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", ppid,
                     &utime, &stime) != 3)
        return -1;
    *ticks = utime + stime;
    return 0;
}

/* utime + stime of a process from /proc/PID/stat, or NAN. */
static double process_cpu_s(long pid) {
    long ppid;
    unsigned long long ticks;
    if (pid <= 0 || read_stat(pid, &ppid, &ticks) != 0) return NAN;
    return (double)ticks / sysconf(_SC_CLK_TCK);
}

/* CPU seconds spent by everything on the machine so far (/proc/stat), or NAN. */
static double machine_busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return NAN;
    unsigned long long user, nice, sys, idle, iowait, irq, softirq, steal;
    int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &sys,
                     &idle, &iowait, &irq, &softirq, &steal);
    fclose(f);
    if (got != 8) return NAN;
    return (double)(user + nice + sys + irq + softirq + steal) / sysconf(_SC_CLK_TCK);
}

/* The kernel's threads (kthreadd, pid 2, and its children) and their utime + stime (ticks)
 * at the start of the window. Work the kernel does in threads of its own, such as writing
 * back the pages a server's fsync asked for, is in the machine's busy time but in no process
 * of ours. Kept per thread because kernel workers come and go: a sum over whichever threads
 * exist at each end loses a whole lifetime of ticks when one exits in the window, which made
 * the "other programs" share of a run read 24 % on a quiet machine. */
#define KERNEL_THREADS_MAX 8192
typedef struct {
    long pid;
    unsigned long long ticks;
} kernel_thread_ticks;
static kernel_thread_ticks kernel_threads_at_start[KERNEL_THREADS_MAX];
static int kernel_threads_at_start_count;
static int kernel_threads_at_start_overflow;   /* more than the table holds: not measured */

/* With `record`, notes every kernel thread's ticks and returns 0; without, returns the CPU
 * seconds kernel threads spent since they were noted (a thread begun since counts whole; one
 * gone since is lost with its ticks of the window). NAN when there are none to see, or more
 * than the table noted. */
static double kernel_threads_s(int record) {
    DIR *proc = opendir("/proc");
    if (!proc) return NAN;
    unsigned long long total = 0;
    int seen = 0;
    if (record) {
        kernel_threads_at_start_count = 0;
        kernel_threads_at_start_overflow = 0;
    }
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        long ppid;
        unsigned long long ticks;
        if (read_stat(pid, &ppid, &ticks) != 0) continue;   /* gone since readdir */
        if (pid != 2 && ppid != 2) continue;
        seen = 1;
        if (record) {
            if (kernel_threads_at_start_count < KERNEL_THREADS_MAX) {
                kernel_thread_ticks *noted = &kernel_threads_at_start[kernel_threads_at_start_count++];
                noted->pid = pid;
                noted->ticks = ticks;
            } else {
                kernel_threads_at_start_overflow = 1;   /* one not noted would count whole */
            }
            continue;
        }
        unsigned long long before = 0;
        for (int i = 0; i < kernel_threads_at_start_count; i++)
            if (kernel_threads_at_start[i].pid == pid) {
                before = kernel_threads_at_start[i].ticks <= ticks ? kernel_threads_at_start[i].ticks : 0;
                break;
            }
        total += ticks - before;
    }
    closedir(proc);
    if (!record && kernel_threads_at_start_overflow) return NAN;
    return seen ? (double)total / sysconf(_SC_CLK_TCK) : NAN;
}

typedef struct {
    double wall, server, own, machine, kernel_threads;
} cpu_sample;

/* The window's first sample (`start`) notes the kernel threads; its kernel_threads is 0 and
 * the last sample's is the time since, so the difference stays b - a as for the rest. */
static cpu_sample sample_cpu(long server_pid, int start) {
    cpu_sample s = {now_s(), process_cpu_s(server_pid), own_cpu_s(), machine_busy_s(),
                    kernel_threads_s(start)};
    return s;
}

/* ------------------------------------------------------------------ settings */
typedef struct {
    char who[80];
    uint8_t key[32];
} terminal;

static struct {
    const char *host, *spec, *latencies_path, *unanswered_path;
    int port, connections, depth;
    double rate, warmup, seconds, drain;
    uint64_t amount_max, seed, requests_max;
    long server_pid;
    terminal *terminals;
    size_t terminal_count;
    char **cards;
    size_t *card_sizes;
    size_t card_count;
} cfg = {.host = "127.0.0.1", .depth = 1, .drain = 10.0, .amount_max = 10};

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Hex to bytes; returns the byte count or -1. */
static long from_hex(const char *hex, uint8_t *out, size_t cap) {
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > cap) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(n / 2);
}

static void read_spec(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    char line[512], word[16], a[256], b[256];
    size_t terminals_cap = 0, cards_cap = 0;
    while (fgets(line, sizeof line, f)) {
        int fields = sscanf(line, "%15s %255s %255s", word, a, b);
        if (fields < 2) continue;
        if (strcmp(word, "terminal") == 0 && fields == 3) {
            if (cfg.terminal_count == terminals_cap) {
                terminals_cap = terminals_cap ? 2 * terminals_cap : 16;
                cfg.terminals = realloc(cfg.terminals, terminals_cap * sizeof *cfg.terminals);
            }
            terminal *t = &cfg.terminals[cfg.terminal_count++];
            snprintf(t->who, sizeof t->who, "%s", a);
            if (strlen(a) > 64 || from_hex(b, t->key, sizeof t->key) != 32) {
                fprintf(stderr, "%s: bad terminal line: %s", path, line);
                exit(2);
            }
        } else if (strcmp(word, "card") == 0) {
            if (cfg.card_count == cards_cap) {
                cards_cap = cards_cap ? 2 * cards_cap : 1024;
                cfg.cards = realloc(cfg.cards, cards_cap * sizeof *cfg.cards);
                cfg.card_sizes = realloc(cfg.card_sizes, cards_cap * sizeof *cfg.card_sizes);
            }
            if (strlen(a) > 32) {   /* a card is 4..32 hex digits (docs/PROTOCOL.md §4.2) */
                fprintf(stderr, "%s: card longer than 32: %s", path, line);
                exit(2);
            }
            cfg.card_sizes[cfg.card_count] = strlen(a);
            cfg.cards[cfg.card_count++] = strdup(a);
        }
    }
    fclose(f);
    if (!cfg.terminal_count || !cfg.card_count) {
        fprintf(stderr, "%s: needs at least one terminal and one card\n", path);
        exit(2);
    }
}

/* ------------------------------------------------------------------ randomness */
static uint64_t rng_state;

static uint64_t next_random(void) {   /* splitmix64: fast, and enough to pick cards */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t random_below(uint64_t n) {
    return (uint64_t)(((unsigned __int128)next_random() * n) >> 64);
}

static double random_unit(void) { return (next_random() >> 11) * 0x1.0p-53; }

/* ------------------------------------------------------------------ connections */
#define ANSWERED (-1.0)

typedef struct {
    int fd, live, writing;
    uint32_t index;
    hmac_key c2s, s2c;
    uint64_t next_seq, next_id;
    /* Send times of seqs [base, next_seq), a ring; ANSWERED once a reply came. */
    double *sent_at;
    uint64_t base, ring;
    uint64_t outstanding;
    uint8_t *partial;          /* an incomplete frame left from the last receive */
    size_t partial_size;
    uint8_t *unsent;
    size_t unsent_size, unsent_cap;
} connection;

static struct {
    tally codes, broken;
    doubles latencies, unanswered_latencies;
    uint64_t *timeline;
    size_t timeline_size;
    uint64_t ok_in_window, sent_in_window, replies_after_window, unanswered, sent_total;
    uint64_t outstanding;
    double load_start, window_start, window_end;
    int epoll;
    connection **live;
    size_t live_count;
} run;

/* A bounded run (--requests) sends no more once its count is out. */
static int may_send(void) { return !cfg.requests_max || run.sent_total < cfg.requests_max; }

static void remember_send(connection *c, uint64_t seq, double at) {
    if (seq - c->base >= c->ring) {
        uint64_t ring = c->ring ? 2 * c->ring : 64;
        double *grown = malloc(ring * sizeof *grown);
        if (!grown) { perror("malloc"); exit(3); }
        for (uint64_t s = c->base; s < seq; s++)
            grown[s & (ring - 1)] = c->sent_at[s & (c->ring - 1)];
        free(c->sent_at);
        c->sent_at = grown;
        c->ring = ring;
    }
    c->sent_at[seq & (c->ring - 1)] = at;
    c->outstanding++;
    run.outstanding++;
}

/* The send time of a request this connection is waiting for, marked answered; or -1. */
static double take_send(connection *c, int has_re, int64_t re) {
    if (!has_re || re < 0 || (uint64_t)re < c->base || (uint64_t)re >= c->next_seq) return -1;
    double *slot = &c->sent_at[(uint64_t)re & (c->ring - 1)];
    double at = *slot;
    if (at == ANSWERED) return -1;
    *slot = ANSWERED;
    while (c->base < c->next_seq && c->sent_at[c->base & (c->ring - 1)] == ANSWERED) c->base++;
    c->outstanding--;
    run.outstanding--;
    return at;
}

static void count_unanswered(connection *c, double now) {
    for (uint64_t s = c->base; s < c->next_seq; s++) {
        double at = c->sent_at[s & (c->ring - 1)];
        if (at == ANSWERED) continue;
        if (at >= run.window_start) {
            run.unanswered++;
            doubles_add(&run.unanswered_latencies, now - at);
        }
    }
    run.outstanding -= c->outstanding;
    c->outstanding = 0;
    c->base = c->next_seq;
}

static void drop(connection *c, const char *reason) {
    if (!c->live) return;
    c->live = 0;
    tally_add(&run.broken, reason, 1);
    count_unanswered(c, now_s());
    epoll_ctl(run.epoll, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    for (size_t i = 0; i < run.live_count; i++)
        if (run.live[i] == c) { run.live[i] = run.live[--run.live_count]; break; }
}

/* One frame around `body`: LEN, BODY, TAG (docs/PROTOCOL.md §1.1, §1.3). */
static size_t frame(uint8_t *out, const uint8_t *body, size_t size, const hmac_key *key) {
    uint8_t digest[32];
    uint32_t length = (uint32_t)(size + TAG_BYTES);
    out[0] = length >> 24; out[1] = length >> 16; out[2] = length >> 8; out[3] = (uint8_t)length;
    memmove(out + 4, body, size);
    hmac_digest(key, body, size, digest);
    memcpy(out + 4 + size, digest, TAG_BYTES);
    return 4 + size + TAG_BYTES;
}

#define DEBIT_FRAME_MAX 256

/* A signed debit frame for the next seq of `c`, sent (or meant to be) at `at`. */
static size_t debit_frame(connection *c, uint8_t *out, double at) {
    uint8_t body[DEBIT_FRAME_MAX];
    writer w = {body};
    uint64_t card = random_below(cfg.card_count);
    uint64_t seq = c->next_seq++;
    put_byte(&w, 0x85);
    put_cstr(&w, "t"); put_cstr(&w, "debit");
    put_cstr(&w, "card"); put_str(&w, cfg.cards[card], cfg.card_sizes[card]);
    put_cstr(&w, "amount"); put_uint(&w, 1 + random_below(cfg.amount_max));
    put_cstr(&w, "id"); put_uint(&w, ++c->next_id);
    put_cstr(&w, "seq"); put_uint(&w, seq);
    remember_send(c, seq, at);
    run.sent_total++;
    return frame(out, body, (size_t)(w.p - body), &c->c2s);
}

static void watch(connection *c, int writing) {
    struct epoll_event event = {.events = EPOLLIN | (writing ? EPOLLOUT : 0), .data.ptr = c};
    c->writing = writing;
    epoll_ctl(run.epoll, EPOLL_CTL_MOD, c->fd, &event);
}

static void keep_unsent(connection *c, const uint8_t *data, size_t size) {
    if (c->unsent_size + size > c->unsent_cap) {
        c->unsent_cap = (c->unsent_size + size) * 2;
        c->unsent = realloc(c->unsent, c->unsent_cap);
        if (!c->unsent) { perror("realloc"); exit(3); }
    }
    memcpy(c->unsent + c->unsent_size, data, size);
    c->unsent_size += size;
}

static void send_data(connection *c, const uint8_t *data, size_t size) {
    if (c->unsent_size) {
        keep_unsent(c, data, size);
        if (c->unsent_size > CLIENT_UNSENT_BYTES_MAX) drop(c, "client send backlog");
        return;
    }
    ssize_t sent = send(c->fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) { drop(c, strerror(errno)); return; }
        sent = 0;
    }
    if ((size_t)sent < size) {
        keep_unsent(c, data + sent, size - (size_t)sent);
        if (!c->writing) watch(c, 1);
    }
}

static void flush_unsent(connection *c) {
    ssize_t sent = send(c->fd, c->unsent, c->unsent_size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) drop(c, strerror(errno));
        return;
    }
    memmove(c->unsent, c->unsent + sent, c->unsent_size - (size_t)sent);
    c->unsent_size -= (size_t)sent;
    if (!c->unsent_size) watch(c, 0);
}

static int tags_equal(const uint8_t *a, const uint8_t *b) { return memcmp(a, b, TAG_BYTES) == 0; }

static const uint8_t ZERO_TAG[TAG_BYTES] = {0};

/* Handle one reply payload; returns 1 if it answered one of our requests, 0 if not, -1 on a
 * broken contract (the reason written to `why`). */
static int handle_reply(connection *c, const uint8_t *payload, size_t size, double now,
                        uint64_t *ok, char *why) {
    const uint8_t *body = payload, *tag = payload + size - TAG_BYTES;
    size_t body_size = size - TAG_BYTES;
    uint8_t digest[32];
    reply r;
    if (parse_reply(body, body_size, &r) != 0) {
        strcpy(why, "protocol: frame_invalid");
        return -1;
    }
    hmac_digest(&c->s2c, body, body_size, digest);
    if (!tags_equal(digest, tag) && !(item_is(r.t, "error") && tags_equal(tag, ZERO_TAG))) {
        strcpy(why, "protocol: mac_invalid");
        return -1;
    }
    double sent_at = take_send(c, r.has_re, r.re);
    char code[40], t[40], name[REASON_MAX];
    item_text(r.code, code, sizeof code);
    if (sent_at < 0) {
        item_text(r.t, t, sizeof t);
        snprintf(name, sizeof name, "unexpected %s/%s", t, code);
        tally_add(&run.codes, name, 1);
        return 0;
    }
    tally_add(&run.codes, code, 1);
    if (item_is(r.code, "ok")) (*ok)++;
    if (sent_at >= run.window_start) doubles_add(&run.latencies, now - sent_at);
    return 1;
}

static uint8_t receive_buffer[FRAME_MAX + 4 + RECEIVE_BYTES];

/* Replies found in one receive; returns how many answered our requests. */
static uint64_t receive_replies(connection *c, double now) {
    size_t have = c->partial_size;
    if (have) memcpy(receive_buffer, c->partial, have);
    ssize_t got = recv(c->fd, receive_buffer + have, RECEIVE_BYTES, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (got <= 0) { drop(c, "closed by the server"); return 0; }
    have += (size_t)got;
    size_t offset = 0;
    uint64_t answered = 0, ok = 0;
    char why[REASON_MAX];
    while (have - offset >= 4) {
        const uint8_t *p = receive_buffer + offset;
        uint32_t length = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (length > FRAME_MAX || length < FRAME_MIN) {
            drop(c, length > FRAME_MAX ? "protocol: frame_too_large" : "protocol: frame_invalid");
            return 0;
        }
        if (have - offset - 4 < length) break;
        int answer = handle_reply(c, p + 4, length, now, &ok, why);
        if (answer < 0) { drop(c, why); return 0; }
        answered += (uint64_t)answer;
        offset += 4 + length;
    }
    c->partial_size = have - offset;
    if (c->partial_size) {
        if (!c->partial) c->partial = malloc(FRAME_MAX + 4);
        memcpy(c->partial, receive_buffer + offset, c->partial_size);
    }
    if (ok) {
        size_t second = (size_t)(now - run.load_start);
        if (second < run.timeline_size) run.timeline[second] += ok;
        if (now >= run.window_start && now < run.window_end) run.ok_in_window += ok;
        else if (now >= run.window_end) run.replies_after_window += ok;
    }
    return answered;
}

/* ------------------------------------------------------------------ signing on */
/* One whole frame into `buffer`; `*have` says how many bytes were read (a frame the peer
 * sent right after it may have come along). */
static int read_frame_blocking(int fd, uint8_t *buffer, size_t cap, size_t *size,
                               size_t *have_out) {
    size_t have = 0;
    for (;;) {
        if (have >= 4) {
            uint32_t length = (uint32_t)buffer[0] << 24 | (uint32_t)buffer[1] << 16 |
                              (uint32_t)buffer[2] << 8 | buffer[3];
            if (length < FRAME_MIN || length + 4 > cap) return -2;
            if (have >= length + 4) { *size = length; *have_out = have; return 0; }
        }
        ssize_t got = recv(fd, buffer + have, cap - have, 0);
        if (got == 0) { errno = ECONNRESET; return -1; }
        if (got < 0) return -1;
        have += (size_t)got;
    }
}

typedef struct {
    connection *c;
    const terminal *who;
    uint8_t nonce[NONCE_BYTES];
} pending_hello;

static int open_socket(const struct sockaddr_in *address, char *why) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { snprintf(why, REASON_MAX, "connect: %s", strerror(errno)); return -1; }
    struct timeval timeout = {SOCKET_TIMEOUT_S, 0};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)address, sizeof *address) != 0) {
        snprintf(why, REASON_MAX, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int send_hello(int fd, const terminal *who, const uint8_t nonce[NONCE_BYTES]) {
    uint8_t body[256], out[300];
    writer w = {body};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    hmac_key key;
    hmac_setup(&key, who->key, sizeof who->key);
    put_byte(&w, 0x85);
    put_cstr(&w, "t"); put_cstr(&w, "hello");
    put_cstr(&w, "v"); put_uint(&w, PROTOCOL_VERSION);
    put_cstr(&w, "who"); put_cstr(&w, who->who);
    put_cstr(&w, "nonce"); put_bin(&w, nonce, NONCE_BYTES);
    put_cstr(&w, "at"); put_uint(&w, (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    size_t size = frame(out, body, (size_t)(w.p - body), &key);
    return send(fd, out, size, MSG_NOSIGNAL) == (ssize_t)size ? 0 : -1;
}

/* Read the hello reply and derive the direction keys (docs/PROTOCOL.md §1.3, §2.1). */
static int finish_hello(pending_hello *h, char *why) {
    uint8_t buffer[FRAME_MAX + 4], digest[32], material[3 + 2 * NONCE_BYTES];
    size_t size, have;
    int got = read_frame_blocking(h->c->fd, buffer, FRAME_MAX + 4, &size, &have);
    if (got != 0) {
        snprintf(why, REASON_MAX, "hello: %s", got == -2 ? "frame_invalid" : strerror(errno));
        return -1;
    }
    const uint8_t *body = buffer + 4, *tag = buffer + 4 + size - TAG_BYTES;
    size_t body_size = size - TAG_BYTES;
    reply r;
    if (parse_reply(body, body_size, &r) != 0) {
        snprintf(why, REASON_MAX, "hello: frame_invalid");
        return -1;
    }
    if (item_is(r.t, "error")) {
        char code[48];
        item_text(r.code, code, sizeof code);
        snprintf(why, REASON_MAX, "hello: ProtocolError %s: refused by peer", code);
        return -1;
    }
    hmac_key key;
    hmac_setup(&key, h->who->key, sizeof h->who->key);
    hmac_digest(&key, body, body_size, digest);
    if (!tags_equal(digest, tag)) { snprintf(why, REASON_MAX, "hello: mac_invalid"); return -1; }
    if (!item_is(r.code, "ok") || r.nonce.kind != 'b' || r.nonce.size != NONCE_BYTES) {
        snprintf(why, REASON_MAX, "hello: unauthenticated: hello reply not ok");
        return -1;
    }
    memcpy(material + 3, h->nonce, NONCE_BYTES);
    memcpy(material + 3 + NONCE_BYTES, r.nonce.bytes, NONCE_BYTES);
    memcpy(material, "c2s", 3);
    hmac_digest(&key, material, sizeof material, digest);
    hmac_setup(&h->c->c2s, digest, 32);
    memcpy(material, "s2c", 3);
    hmac_digest(&key, material, sizeof material, digest);
    hmac_setup(&h->c->s2c, digest, 32);
    h->c->partial_size = have - (size + 4);
    if (h->c->partial_size) {
        h->c->partial = malloc(FRAME_MAX + 4);
        memcpy(h->c->partial, buffer + size + 4, h->c->partial_size);
    }
    return 0;
}

/* Sign on `count` connections, CONNECT_BATCH hellos at a time; failures are counted. */
static connection **connect_all(const struct sockaddr_in *address, int count, size_t *connected) {
    connection **all = calloc((size_t)count, sizeof *all);
    pending_hello *pending = calloc(CONNECT_BATCH, sizeof *pending);
    char why[REASON_MAX];
    double deadline = now_s() + CONNECT_TIMEOUT_S;
    *connected = 0;
    for (int first = 0; first < count; first += CONNECT_BATCH) {
        if (now_s() > deadline) {
            tally_add(&run.broken, "connect: phase timed out", (uint64_t)(count - first));
            break;
        }
        int waiting = 0;
        for (int index = first; index < count && index < first + CONNECT_BATCH; index++) {
            int fd = open_socket(address, why);
            if (fd < 0) { tally_add(&run.broken, why, 1); continue; }
            pending_hello *h = &pending[waiting];
            h->who = &cfg.terminals[(size_t)index % cfg.terminal_count];
            if (getrandom(h->nonce, NONCE_BYTES, 0) != NONCE_BYTES ||
                send_hello(fd, h->who, h->nonce) != 0) {
                snprintf(why, REASON_MAX, "connect: %s", strerror(errno));
                tally_add(&run.broken, why, 1);
                close(fd);
                continue;
            }
            h->c = calloc(1, sizeof *h->c);
            h->c->fd = fd;
            h->c->index = (uint32_t)index;
            waiting++;
        }
        for (int i = 0; i < waiting; i++) {
            connection *c = pending[i].c;
            if (finish_hello(&pending[i], why) != 0) {
                tally_add(&run.broken, why, 1);
                close(c->fd);
                free(c);
                continue;
            }
            fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
            c->live = 1;
            c->next_seq = c->base = 1;
            c->next_id = (uint64_t)c->index * ID_STRIDE;
            all[(*connected)++] = c;
        }
    }
    free(pending);
    return all;
}

/* ------------------------------------------------------------------ the load loop */
static int wait_events(struct epoll_event *events, double timeout_s) {
    struct timespec timeout = {(time_t)timeout_s, (long)((timeout_s - floor(timeout_s)) * 1e9)};
    static int fine = 1;   /* epoll_pwait2 (Linux 5.11): sub-millisecond waits, no spinning */
    if (fine) {
        int n = epoll_pwait2(run.epoll, events, EVENTS_MAX, &timeout, NULL);
        if (n >= 0 || errno != ENOSYS) return n;
        fine = 0;
    }
    return epoll_wait(run.epoll, events, EVENTS_MAX, (int)(timeout_s * 1000));
}

static void print_cpu(cpu_sample a, cpu_sample b) {
    double values[5] = {b.wall - a.wall, b.server - a.server, b.own - a.own,
                        b.machine - a.machine, b.kernel_threads - a.kernel_threads};
    printf("cpu");
    for (int i = 0; i < 5; i++) {
        if (isnan(values[i])) printf(" -");
        else printf(" %.6f", values[i]);
    }
    printf("\n");
}

static int write_doubles(const char *path, const doubles *d) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); return -1; }
    size_t written = d->size ? fwrite(d->values, sizeof *d->values, d->size, f) : 0;
    int bad = fclose(f) != 0 || written != d->size;
    if (bad) perror(path);
    return bad ? -1 : 0;
}

/* Room for the frames of one send: a closed loop's depth, or 64 (the switch's in-flight cap). */
#define FRAME_SLOT (4 + DEBIT_FRAME_MAX + TAG_BYTES)
static uint8_t *send_buffer;

static int load(connection **all, size_t count) {
    int open_loop = cfg.rate > 0;
    struct epoll_event events[EVENTS_MAX];
    run.epoll = epoll_create1(0);
    send_buffer = malloc((size_t)(cfg.depth > 64 ? cfg.depth : 64) * FRAME_SLOT);
    if (run.epoll < 0 || !send_buffer) { perror("load"); exit(3); }
    run.live = all;
    run.live_count = count;
    for (size_t i = 0; i < count; i++) {
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = all[i]};
        epoll_ctl(run.epoll, EPOLL_CTL_ADD, all[i]->fd, &event);
    }
    run.timeline_size = (size_t)ceil(cfg.warmup + cfg.seconds + cfg.drain) + 2;
    run.timeline = calloc(run.timeline_size, sizeof *run.timeline);
    double now = now_s(), drain_deadline = 0;
    run.load_start = now;
    run.window_start = now + cfg.warmup;
    run.window_end = run.window_start + cfg.seconds;
    enum { WARMUP, WINDOW, DRAIN } phase = WARMUP;
    cpu_sample start = {0}, stop = {0};
    int sending = 1, sampled = 0;
    double mean_gap_s = open_loop ? 1.0 / cfg.rate : 0.0, next_send = run.load_start;
    if (!open_loop) {
        /* run.live shrinks as connections drop: walk a copy. */
        connection **first = malloc(count * sizeof *first);
        memcpy(first, all, count * sizeof *first);
        for (size_t i = 0; i < count; i++) {
            if (!first[i]->live) continue;
            size_t size = 0;
            for (int d = 0; d < cfg.depth && may_send(); d++)
                size += debit_frame(first[i], send_buffer + size, now);
            if (size) send_data(first[i], send_buffer, size);
        }
        free(first);
    }
    for (;;) {
        now = now_s();
        if (phase == WARMUP && now >= run.window_start) {
            start = sample_cpu(cfg.server_pid, 1);
            phase = WINDOW;
        }
        int bounded_done = !may_send() && run.outstanding == 0;
        if (phase == WINDOW && (now >= run.window_end || bounded_done)) {
            stop = sample_cpu(cfg.server_pid, 0);
            sampled = 1;
            if (bounded_done) run.window_end = now;   /* the bounded run's window ends with it */
            phase = DRAIN;
            sending = 0;
            drain_deadline = now + cfg.drain;
        }
        if (phase == DRAIN && (run.outstanding == 0 || now >= drain_deadline)) break;
        if (!run.live_count) {
            if (phase != DRAIN) {
                if (phase == WARMUP) start = sample_cpu(cfg.server_pid, 1);
                stop = sample_cpu(cfg.server_pid, 0);
                sampled = 1;
            }
            break;
        }
        double timeout;
        if (open_loop && sending) {
            /* Group this instant's due sends by connection: one send each. */
            while (next_send <= now && run.live_count) {
                if (!may_send()) break;
                connection *c = run.live[random_below(run.live_count)];
                size_t size = debit_frame(c, send_buffer, next_send);
                if (next_send >= run.window_start) run.sent_in_window++;
                send_data(c, send_buffer, size);
                next_send += -log(1.0 - random_unit()) * mean_gap_s;
            }
            timeout = next_send - now_s();
            if (timeout < 0) timeout = 0;
            double boundary = phase == WARMUP ? run.window_start : run.window_end;
            if (boundary - now < timeout) timeout = boundary - now > 0 ? boundary - now : 0;
            if (!may_send()) timeout = POLL_INTERVAL_MAX_S;
        } else {
            double boundary = phase == WARMUP   ? run.window_start
                              : phase == WINDOW ? run.window_end
                                                : drain_deadline;
            timeout = boundary - now;
            if (timeout > POLL_INTERVAL_MAX_S) timeout = POLL_INTERVAL_MAX_S;
            if (timeout < 0) timeout = 0;
        }
        int n = wait_events(events, timeout);
        if (n <= 0) continue;
        now = now_s();
        for (int i = 0; i < n; i++) {
            connection *c = events[i].data.ptr;
            if (!c->live) continue;
            if (events[i].events & EPOLLOUT) {
                flush_unsent(c);
                if (!c->live) continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                uint64_t answered = receive_replies(c, now);
                if (answered && sending && !open_loop && c->live) {
                    size_t size = 0;
                    for (uint64_t a = 0; a < answered && may_send(); a++)
                        size += debit_frame(c, send_buffer + size, now);
                    if (size) send_data(c, send_buffer, size);
                }
            }
        }
    }
    if (!open_loop) run.sent_in_window = 0;
    double end = now_s();
    for (size_t i = 0; i < run.live_count; i++) count_unanswered(run.live[i], end);
    for (size_t i = 0; i < run.live_count; i++) close(run.live[i]->fd);
    if (sampled) print_cpu(start, stop);
    return 0;
}

/* ------------------------------------------------------------------ the responder */
/* `loadgen --respond`: a cheap peer that answers this client as a server does, so that
 * bench/e2e_load.py (--server responder) can measure how far the client itself drives when
 * the other side costs it little. It checks what a server checks of a client that only
 * debits (the hello's version, its tag with the terminal's key, each request's tag with the
 * direction key and its seq in order, keys that are strings, nothing after the map) and
 * answers each request as bench/bare_server.py does; it keeps nothing else. Where a server
 * would answer an error frame it ends the session without one. It is an instrument of the
 * benchmark, never a server it compares. */
#define RESPOND_LISTEN_BACKLOG 4096
#define RESPOND_UNSENT_BYTES_MAX (4 * 1024 * 1024)
#define RESPOND_ACCEPT_PAUSE_S 0.1    /* out of descriptors: accept again after this */

typedef struct {
    int fd, open, writing;
    hmac_key c2s, s2c;
    uint64_t next_seq;
    uint8_t *partial;
    size_t partial_size;
    uint8_t *unsent;
    size_t unsent_size;
} peer;

static volatile sig_atomic_t respond_stop;
static uint64_t respond_txn;

static void on_stop_signal(int signal_number) { (void)signal_number; respond_stop = 1; }

static void peer_close(int epoll, peer *p) {
    epoll_ctl(epoll, EPOLL_CTL_DEL, p->fd, NULL);
    close(p->fd);
    free(p->partial);
    free(p->unsent);
    free(p);
}

/* Open the session from a hello frame's payload: the hello reply into `out`; 0, or -1. */
static int respond_hello(peer *p, const uint8_t *payload, size_t size, writer *out) {
    const uint8_t *body = payload, *tag = payload + size - TAG_BYTES;
    size_t body_size = size - TAG_BYTES;
    reader r = {body, body + body_size, 0};
    item map = get_item(&r), t = {0}, who = {0}, nonce = {0}, version = {0};
    if (map.kind != 'm') return -1;
    for (size_t i = 0; i < map.size && !r.bad; i++) {
        item key = get_item(&r), value = get_item(&r);
        if (key.kind != 's') return -1;
        if (item_is(key, "t")) t = value;
        else if (item_is(key, "v")) version = value;
        else if (item_is(key, "who")) who = value;
        else if (item_is(key, "nonce")) nonce = value;
        skip_item(&r, value, 1);
    }
    if (r.bad || r.p != r.end || !item_is(t, "hello") || version.kind != 'i' ||
        version.integer != PROTOCOL_VERSION || who.kind != 's' || nonce.kind != 'b' ||
        nonce.size != NONCE_BYTES)
        return -1;
    const terminal *known = NULL;
    for (size_t i = 0; i < cfg.terminal_count && !known; i++)
        if (strlen(cfg.terminals[i].who) == who.size &&
            memcmp(cfg.terminals[i].who, who.bytes, who.size) == 0)
            known = &cfg.terminals[i];
    if (!known) return -1;
    hmac_key key;
    uint8_t digest[32], server_nonce[NONCE_BYTES], material[3 + 2 * NONCE_BYTES];
    hmac_setup(&key, known->key, sizeof known->key);
    hmac_digest(&key, body, body_size, digest);
    if (!tags_equal(digest, tag)) return -1;
    if (getrandom(server_nonce, NONCE_BYTES, 0) != NONCE_BYTES) return -1;
    uint8_t reply[256];
    writer w = {reply};
    put_byte(&w, 0x87);
    put_cstr(&w, "t"); put_cstr(&w, "hello");
    put_cstr(&w, "re"); put_uint(&w, 0);
    put_cstr(&w, "code"); put_cstr(&w, "ok");
    put_cstr(&w, "nonce"); put_bin(&w, server_nonce, NONCE_BYTES);
    put_cstr(&w, "role"); put_cstr(&w, "terminal");
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    put_cstr(&w, "time"); put_uint(&w, (uint64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000);
    put_cstr(&w, "blacklist"); put_uint(&w, 0);
    out->p += frame(out->p, reply, (size_t)(w.p - reply), &key);
    memcpy(material + 3, nonce.bytes, NONCE_BYTES);
    memcpy(material + 3 + NONCE_BYTES, server_nonce, NONCE_BYTES);
    memcpy(material, "c2s", 3);
    hmac_digest(&key, material, sizeof material, digest);
    hmac_setup(&p->c2s, digest, 32);
    memcpy(material, "s2c", 3);
    hmac_digest(&key, material, sizeof material, digest);
    hmac_setup(&p->s2c, digest, 32);
    p->open = 1;
    p->next_seq = 1;
    return 0;
}

/* Answer one request frame's payload into `out`: 0, or -1 (the session ends). */
static int respond_request(peer *p, const uint8_t *payload, size_t size, writer *out) {
    const uint8_t *body = payload, *tag = payload + size - TAG_BYTES;
    size_t body_size = size - TAG_BYTES;
    uint8_t digest[32];
    hmac_digest(&p->c2s, body, body_size, digest);
    if (!tags_equal(digest, tag)) return -1;
    reader r = {body, body + body_size, 0};
    item map = get_item(&r), t = {0};
    int64_t seq = -1;
    if (map.kind != 'm') return -1;
    for (size_t i = 0; i < map.size && !r.bad; i++) {
        item key = get_item(&r), value = get_item(&r);
        if (key.kind != 's') return -1;
        if (item_is(key, "t")) t = value;
        else if (item_is(key, "seq") && value.kind == 'i') seq = value.integer;
        skip_item(&r, value, 1);
    }
    if (r.bad || r.p != r.end || t.kind != 's' || t.size > 32 || seq < 0 ||
        (uint64_t)seq != p->next_seq)
        return -1;
    p->next_seq++;
    uint8_t reply[160];
    writer w = {reply};
    put_byte(&w, 0x87);
    put_cstr(&w, "t"); put_str(&w, (const char *)t.bytes, t.size);
    put_cstr(&w, "re"); put_uint(&w, (uint64_t)seq);
    put_cstr(&w, "code"); put_cstr(&w, "ok");
    put_cstr(&w, "txn"); put_uint(&w, ++respond_txn);
    put_cstr(&w, "balance"); put_uint(&w, 0);
    put_cstr(&w, "available"); put_uint(&w, 0);
    put_cstr(&w, "account"); put_cstr(&w, "X");
    out->p += frame(out->p, reply, (size_t)(w.p - reply), &p->s2c);
    return 0;
}

static void peer_watch(int epoll, peer *p, int writing) {
    struct epoll_event event = {.events = writing ? EPOLLOUT : EPOLLIN, .data.ptr = p};
    p->writing = writing;
    epoll_ctl(epoll, EPOLL_CTL_MOD, p->fd, &event);
}

/* Send what is owed; stop reading a peer that does not read its replies. 0, or -1. */
static int peer_flush(int epoll, peer *p, const uint8_t *data, size_t size) {
    ssize_t sent = send(p->fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        sent = 0;
    }
    size_t left = size - (size_t)sent;
    if (left > RESPOND_UNSENT_BYTES_MAX) return -1;
    if (left) {
        uint8_t *kept = malloc(left);
        if (!kept) return -1;
        memcpy(kept, data + sent, left);
        free(p->unsent);
        p->unsent = kept;
        p->unsent_size = left;
    } else {
        free(p->unsent);
        p->unsent = NULL;
        p->unsent_size = 0;
    }
    if (!!left != p->writing) peer_watch(epoll, p, !!left);
    return 0;
}

/* One receive of a peer answered: every whole frame in it, the replies in one send. */
static int peer_readable(int epoll, peer *p) {
    static uint8_t replies[(RECEIVE_BYTES / FRAME_MIN + 1) * 256];
    size_t have = p->partial_size;
    if (have) memcpy(receive_buffer, p->partial, have);
    ssize_t got = recv(p->fd, receive_buffer + have, RECEIVE_BYTES, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (got <= 0) return -1;
    have += (size_t)got;
    size_t offset = 0;
    writer out = {replies};
    while (have - offset >= 4) {
        const uint8_t *q = receive_buffer + offset;
        uint32_t length = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
        if (length > FRAME_MAX || length < FRAME_MIN) return -1;
        if (have - offset - 4 < length) break;
        int answered = p->open ? respond_request(p, q + 4, length, &out)
                               : respond_hello(p, q + 4, length, &out);
        if (answered != 0) return -1;
        offset += 4 + length;
    }
    p->partial_size = have - offset;
    if (p->partial_size) {
        if (!p->partial && !(p->partial = malloc(FRAME_MAX + 4))) return -1;
        memcpy(p->partial, receive_buffer + offset, p->partial_size);
    }
    size_t size = (size_t)(out.p - replies);
    return size ? peer_flush(epoll, p, replies, size) : 0;
}

static int respond(const char *host, int port, double lifetime_s) {
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        fprintf(stderr, "--host: an IPv4 address, not %s\n", host);
        return 2;
    }
    int one = 1, listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    socklen_t length = sizeof address;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, RESPOND_LISTEN_BACKLOG) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
        perror("respond: listen");
        return 3;
    }
    struct sigaction stop = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    int epoll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event) != 0) {
        perror("respond: epoll");
        return 3;
    }
    printf("listening on %s:%d\n", host, ntohs(address.sin_port));
    fflush(stdout);
    struct epoll_event events[EVENTS_MAX];
    double deadline = now_s() + lifetime_s, accept_again_at = 0;
    while (!respond_stop && now_s() < deadline) {
        if (accept_again_at && now_s() >= accept_again_at) {
            accept_again_at = 0;
            epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
        }
        int n = epoll_wait(epoll, events, EVENTS_MAX, (int)(POLL_INTERVAL_MAX_S * 1000));
        for (int i = 0; i < n; i++) {
            peer *p = events[i].data.ptr;
            if (!p) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    peer *fresh = calloc(1, sizeof *fresh);
                    if (!fresh) { close(fd); continue; }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    fresh->fd = fd;
                    struct epoll_event watch_in = {.events = EPOLLIN, .data.ptr = fresh};
                    if (epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &watch_in) != 0) {
                        close(fd);
                        free(fresh);
                    }
                }
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                    /* Out of descriptors: the listener stays readable, so stop watching it
                     * for a while instead of waking for it in a loop. */
                    epoll_ctl(epoll, EPOLL_CTL_DEL, listener, NULL);
                    accept_again_at = now_s() + RESPOND_ACCEPT_PAUSE_S;
                }
                continue;
            }
            int failed = p->writing ? peer_flush(epoll, p, p->unsent, p->unsent_size)
                                    : peer_readable(epoll, p);
            if (failed) peer_close(epoll, p);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ command line */
static int hmac_lines(void) {
    char line[8192];
    static uint8_t key[4096], message[4096];
    while (fgets(line, sizeof line, stdin)) {
        char *space = strchr(line, ' '), *newline = strchr(line, '\n');
        if (!space) continue;
        *space = 0;
        if (newline) *newline = 0;
        long key_size = from_hex(line, key, sizeof key);
        long size = from_hex(space + 1, message, sizeof message);
        if (key_size < 0 || size < 0) { fprintf(stderr, "bad hex\n"); return 2; }
        hmac_key k;
        uint8_t digest[32];
        hmac_setup(&k, key, (size_t)key_size);
        hmac_digest(&k, message, (size_t)size, digest);
        for (int i = 0; i < 32; i++) printf("%02x", digest[i]);
        printf("\n");
    }
    return 0;
}

/* A decimal integer, the whole of `text`; -1 otherwise. */
static long whole_number(const char *text) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    return errno || end == text || *end || value < 0 ? -1 : value;
}

/* A finite decimal number, the whole of `text`; NAN otherwise. */
static double finite_number(const char *text) {
    char *end;
    double value = strtod(text, &end);
    return end == text || *end || !isfinite(value) ? NAN : value;
}

#define RESPOND_LIFETIME_S_MAX 86400.0

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --host H --port P --spec FILE --connections N [--depth D | --rate R]\n"
            "               --warmup S --seconds S [--drain S] [--amount-max A] [--seed X]\n"
            "               [--server-pid PID] [--requests N]\n"
            "               --latencies FILE --unanswered FILE\n"
                    "       loadgen --hmac [auto|ni|portable]   (stdin: KEYHEX MSGHEX lines)\n"
            "       loadgen --respond --spec FILE [--host H] --port P --lifetime S\n");
}

int main(int argc, char **argv) {
    if (argc >= 2 && argc <= 3 && strcmp(argv[1], "--hmac") == 0) {
        /* Which SHA-256 to use, so a test can check each one this CPU can run. */
        const char *which = argc == 3 ? argv[2] : "auto";
        if (strcmp(which, "auto") && strcmp(which, "ni") && strcmp(which, "portable")) {
            fprintf(stderr, "loadgen: no SHA-256 named '%s' (auto, ni or portable)\n", which);
            return 2;
        }
        if (choose_sha256(which) != 0) {
            fprintf(stderr, "loadgen: SHA-256 '%s' cannot run on this CPU\n", which);
            return 2;
        }
        return hmac_lines();
    }
    choose_sha256("auto");
    if (argc >= 2 && strcmp(argv[1], "--respond") == 0) {
        const char *spec = NULL;
        int port = -1;
        double lifetime_s = 0;
        for (int i = 2; i + 1 < argc; i += 2) {
            if (!strcmp(argv[i], "--spec")) spec = argv[i + 1];
            else if (!strcmp(argv[i], "--host")) cfg.host = argv[i + 1];
            else if (!strcmp(argv[i], "--port")) port = whole_number(argv[i + 1]);
            else if (!strcmp(argv[i], "--lifetime")) lifetime_s = finite_number(argv[i + 1]);
            else { usage(); return 2; }
        }
        if (argc % 2 || !spec || port < 0 || port > 65535 || !(lifetime_s > 0) ||
            lifetime_s > RESPOND_LIFETIME_S_MAX) {
            usage();
            return 2;
        }
        read_spec(spec);
        return respond(cfg.host, port, lifetime_s);
    }
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) { usage(); return 2; }
        i++;
        if (!strcmp(flag, "--host")) cfg.host = value;
        else if (!strcmp(flag, "--port")) cfg.port = atoi(value);
        else if (!strcmp(flag, "--spec")) cfg.spec = value;
        else if (!strcmp(flag, "--connections")) cfg.connections = atoi(value);
        else if (!strcmp(flag, "--depth")) cfg.depth = atoi(value);
        else if (!strcmp(flag, "--rate")) cfg.rate = atof(value);
        else if (!strcmp(flag, "--warmup")) cfg.warmup = atof(value);
        else if (!strcmp(flag, "--seconds")) cfg.seconds = atof(value);
        else if (!strcmp(flag, "--drain")) cfg.drain = atof(value);
        else if (!strcmp(flag, "--amount-max")) cfg.amount_max = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--seed")) cfg.seed = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--server-pid")) cfg.server_pid = atol(value);
        else if (!strcmp(flag, "--requests")) cfg.requests_max = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--latencies")) cfg.latencies_path = value;
        else if (!strcmp(flag, "--unanswered")) cfg.unanswered_path = value;
        else { usage(); return 2; }
    }
    if (!cfg.spec || !cfg.latencies_path || !cfg.unanswered_path || cfg.port <= 0 ||
        cfg.connections < 1 || cfg.depth < 1 || cfg.seconds <= 0 || cfg.warmup < 0 ||
        cfg.rate < 0 || cfg.amount_max < 1 || cfg.drain < 0) {
        usage();
        return 2;
    }
    /* However it goes, a load run ends by itself. */
    alarm((unsigned)(CONNECT_TIMEOUT_S + cfg.warmup + cfg.seconds + cfg.drain + 60));
    signal(SIGPIPE, SIG_IGN);
    read_spec(cfg.spec);
    rng_state = cfg.seed;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port)};
    if (inet_pton(AF_INET, cfg.host, &address.sin_addr) != 1) {
        fprintf(stderr, "--host: an IPv4 address, not %s\n", cfg.host);
        return 2;
    }
    double began = now_s();
    size_t connected;
    connection **all = connect_all(&address, cfg.connections, &connected);
    fprintf(stderr, "signed on %zu connections in %.1f s\n", connected, now_s() - began);
    printf("connected %zu\n", connected);
    if (connected) load(all, connected);
    for (size_t i = 0; i < run.codes.size; i++)
        printf("code %llu %s\n", (unsigned long long)run.codes.entries[i].count,
               run.codes.entries[i].name);
    for (size_t i = 0; i < run.broken.size; i++)
        printf("broken %llu %s\n", (unsigned long long)run.broken.entries[i].count,
               run.broken.entries[i].name);
    printf("ok_in_window %llu\nsent_in_window %llu\nunanswered %llu\nreplies_after_window %llu\n",
           (unsigned long long)run.ok_in_window, (unsigned long long)run.sent_in_window,
           (unsigned long long)run.unanswered, (unsigned long long)run.replies_after_window);
    printf("timeline");
    for (size_t i = 0; i < run.timeline_size; i++)
        printf(" %llu", (unsigned long long)run.timeline[i]);
    printf("\n");
    if (write_doubles(cfg.latencies_path, &run.latencies) != 0 ||
        write_doubles(cfg.unanswered_path, &run.unanswered_latencies) != 0)
        return 1;
    return 0;
}
