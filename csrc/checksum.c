// SPDX-License-Identifier: MIT
/* checksum.c - the Internet checksum (RFC 1071) for IPv4 headers and TCP, UDP, ICMP, ICMPv6.
 *
 * Theory of operation
 * -------------------
 * The Internet checksum is the one's complement of the one's complement sum of the data taken
 * as big-endian 16-bit words (an odd trailing byte is padded with a zero low byte). One's
 * complement addition is commutative and associative, and a byte swap of every word swaps the
 * folded sum (RFC 1071, section 2), so the hot loop adds native-order words into wide
 * accumulators and converts once at the end:
 *
 *   raw_sum()   adds 32-bit native words into 64-bit accumulators (each addend < 2^32, so no
 *               carry is lost for 2^32 additions); an AVX2 variant adds word pairs into 32-bit
 *               lanes with VPMADDWD on aligned 256-bit loads, widening to 64-bit lanes every
 *               megabyte. The variant is picked per call from the CPU's features (a cheap
 *               test of what libgcc recorded at load); nothing global is written.
 *   sum_be()    folds that to 16 bits and swaps it on little-endian hosts, giving the folded
 *               sum of the big-endian words.
 *
 * Byte-order convention: every "partial sum" taken or returned here is the folded one's
 * complement sum of the big-endian 16-bit words, as a host integer in 0..0xffff (it is 0 only
 * for all-zero data). Every final checksum returned is a host integer in 0..0xffff whose
 * big-endian encoding (high byte first) is what goes into the packet's checksum field.
 *
 * Chaining: pc_csum_partial(b, n, pc_csum_partial(a, m, 0)) equals the sum of a and b laid end
 * to end only when m is even; pc_csum_iov() handles segments of any length, swapping the
 * byte lanes of a segment that starts at an odd offset of the whole.
 *
 * The L4 helpers ignore whatever the checksum field currently holds (they sum around it), so a
 * caller may compute before or after filling it, and can verify a received segment by
 * comparing the result with the stored field.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PC_HAVE_AVX2_CODE 1
#else
#define PC_HAVE_AVX2_CODE 0
#endif

#include "passt_core.h"

/* Bytes summed per raw_sum() call: keeps every accumulator far from overflow for any length. */
#define CSUM_CHUNK	((size_t)1 << 30)

/* Protocol numbers whose checksum field position is known here. */
#define PROTO_ICMP	1
#define PROTO_TCP	6
#define PROTO_UDP	17
#define PROTO_ICMPV6	58

/**
 * fold64() - fold a wide one's complement sum to 16 bits with end-around carries
 * @s:	sum of 16-bit (or wider) words
 *
 * Return: value in 0..0xffff congruent to @s modulo 0xffff, 0 only if @s is 0
 */
static uint32_t fold64(uint64_t s)
{
	s = (s & 0xffffffff) + (s >> 32);	/* < 2^33 */
	s = (s & 0xffff) + (s >> 16);		/* < 2^17 + 2^16 */
	s = (s & 0xffff) + (s >> 16);		/* <= 0x10001 */
	s = (s & 0xffff) + (s >> 16);		/* <= 0xffff */
	return (uint32_t)s;
}

/**
 * swap16() - exchange the two bytes of a 16-bit value
 * @v:	value in 0..0xffff
 *
 * Return: @v with its bytes swapped
 */
static uint32_t swap16(uint32_t v)
{
	return ((v & 0xff) << 8) | (v >> 8);
}

/**
 * raw_sum_scalar() - sum native-order 16-bit words with 64-bit accumulators
 * @p:		data, any alignment
 * @len:	length in bytes, at most CSUM_CHUNK
 *
 * Return: a sum congruent modulo 0xffff to the sum of the native-order words of @p, a trailing
 *	   odd byte padded as the first byte of a word
 */
static uint64_t raw_sum_scalar(const unsigned char *p, size_t len)
{
	uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;

	while (len >= 32) {
		uint32_t w[8];

		memcpy(w, p, sizeof(w));
		a0 += w[0];
		a1 += w[1];
		a2 += w[2];
		a3 += w[3];
		a0 += w[4];
		a1 += w[5];
		a2 += w[6];
		a3 += w[7];
		p += 32;
		len -= 32;
	}
	while (len >= 4) {
		uint32_t w;

		memcpy(&w, p, sizeof(w));
		a0 += w;
		p += 4;
		len -= 4;
	}
	if (len >= 2) {
		uint16_t h;

		memcpy(&h, p, sizeof(h));
		a1 += h;
		p += 2;
		len -= 2;
	}
	if (len) {
		uint16_t h = 0;

		memcpy(&h, p, 1);	/* first byte of a word, zero padding */
		a2 += h;
	}
	return a0 + a1 + a2 + a3;
}

#if PC_HAVE_AVX2_CODE
/* 128-byte blocks per inner run of raw_sum_avx2_aligned(): each 32-bit lane gains at most
 * 65536 in magnitude per block, so 8192 blocks (1 MiB) stay far inside int32_t. */
#define AVX2_RUN	8192

/**
 * widen_add() - add the eight signed 32-bit lanes of a vector into four 64-bit lanes
 * @acc:	64-bit accumulator lanes
 * @v:		32-bit signed lanes
 *
 * Return: @acc plus the sign-extended lanes of @v, pairwise
 */
__attribute__((target("avx2")))
static __m256i widen_add(__m256i acc, __m256i v)
{
	acc = _mm256_add_epi64(acc, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)));
	return _mm256_add_epi64(acc, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
}

/**
 * madd_biased() - add the 16 words of a vector, biased to signed, pairwise into 32-bit lanes
 * @acc:	32-bit accumulator lanes
 * @p:		32 bytes of data, 32-byte aligned
 *
 * Return: @acc plus, per lane, (word0 - 32768) + (word1 - 32768) of the matching word pair
 */
__attribute__((target("avx2")))
static __m256i madd_biased(__m256i acc, const unsigned char *p)
{
	const __m256i bias = _mm256_set1_epi16((short)0x8000), ones = _mm256_set1_epi16(1);
	__m256i v = _mm256_load_si256((const __m256i *)p);

	return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_xor_si256(v, bias), ones));
}

/**
 * raw_sum_avx2_aligned() - exact sum of the native-order 16-bit words of 32-byte vectors
 * @p:		data, 32-byte aligned
 * @vecs:	number of 32-byte vectors, at most CSUM_CHUNK / 32
 *
 * Words are biased into signed range (XOR 0x8000, i.e. minus 32768) so that VPMADDWD against
 * ones adds word pairs into 32-bit lanes (3 vector operations per 32 bytes); the bias, -65536
 * per lane per vector, is added back at the end, giving the exact integer sum.
 *
 * Return: sum of all 16-bit words
 */
__attribute__((target("avx2")))
static uint64_t raw_sum_avx2_aligned(const unsigned char *p, size_t vecs)
{
	__m256i wide = _mm256_setzero_si256();
	size_t blocks = vecs / 4, left;
	int64_t l[4];

	for (left = blocks; left; ) {
		__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
		size_t n = left < AVX2_RUN ? left : AVX2_RUN, i;

		for (i = 0; i < n; i++, p += 128) {
			a0 = madd_biased(a0, p);
			a1 = madd_biased(a1, p + 32);
			a2 = madd_biased(a2, p + 64);
			a3 = madd_biased(a3, p + 96);
		}
		wide = widen_add(widen_add(wide, a0), a1);
		wide = widen_add(widen_add(wide, a2), a3);
		left -= n;
	}
	if (vecs % 4) {
		__m256i a0 = _mm256_setzero_si256();

		for (left = vecs % 4; left; left--, p += 32)
			a0 = madd_biased(a0, p);
		wide = widen_add(wide, a0);
	}
	_mm256_storeu_si256((__m256i *)l, wide);
	_mm256_zeroupper();	/* scalar code follows: no dirty upper state (it costs ~100 ns) */
	/* 8 lanes per vector, each biased by -65536 */
	return (uint64_t)(l[0] + l[1] + l[2] + l[3] + (int64_t)vecs * 8 * 65536);
}

/**
 * raw_sum_avx2() - raw_sum_scalar() with the bulk on 256-bit vectors, on aligned loads
 * @p:		data, any alignment
 * @len:	length in bytes, at most CSUM_CHUNK
 *
 * A scalar head brings the pointer to 32-byte alignment (split loads cost a third of the
 * speed); if that head is odd, the rest sits in the other byte lane and its folded sum is
 * swapped before adding. Below 256 bytes past the head, scalar code is as fast.
 *
 * Return: as raw_sum_scalar()
 */
__attribute__((target("avx2")))
static uint64_t raw_sum_avx2(const unsigned char *p, size_t len)
{
	size_t head = (size_t)(-(uintptr_t)p & 31), vecs;
	uint64_t head_sum, rest;

	if (len < head + 256)
		return raw_sum_scalar(p, len);
	head_sum = raw_sum_scalar(p, head);
	p += head;
	len -= head;
	vecs = len / 32;
	rest = raw_sum_avx2_aligned(p, vecs);
	rest += fold64(raw_sum_scalar(p + vecs * 32, len % 32));
	if (head & 1)
		return head_sum + swap16(fold64(rest));
	return head_sum + rest;
}
#endif /* PC_HAVE_AVX2_CODE */

/**
 * have_avx2() - whether this CPU runs the AVX2 variant
 *
 * Return: non-zero if AVX2 is available
 */
static int have_avx2(void)
{
#if PC_HAVE_AVX2_CODE
	return __builtin_cpu_supports("avx2");
#else
	return 0;
#endif
}

/**
 * raw_sum() - raw_sum_scalar() or raw_sum_avx2(), as chosen and as worth it for the length
 * @impl:	PC_CSUM_SCALAR or PC_CSUM_AVX2 (the caller checked it is available)
 * @p:		data, any alignment
 * @len:	length in bytes, at most CSUM_CHUNK
 *
 * Return: as raw_sum_scalar()
 */
static uint64_t raw_sum(int impl, const unsigned char *p, size_t len)
{
#if PC_HAVE_AVX2_CODE
	if (impl == PC_CSUM_AVX2)
		return raw_sum_avx2(p, len);
#else
	(void)impl;
#endif
	return raw_sum_scalar(p, len);
}

/**
 * sum_be() - folded sum of the big-endian 16-bit words of a buffer, using one implementation
 * @impl:	PC_CSUM_SCALAR or PC_CSUM_AVX2 (the caller checked it is available)
 * @buf:	data, any alignment
 * @len:	length in bytes, any size
 *
 * Return: partial sum in 0..0xffff (see the byte-order convention above)
 */
static uint32_t sum_be(int impl, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint64_t total;

	if (len <= CSUM_CHUNK) {
		total = raw_sum(impl, p, len);
	} else {
		for (total = 0; len; ) {
			size_t n = len < CSUM_CHUNK ? len : CSUM_CHUNK;	/* even: lanes stay */

			total += fold64(raw_sum(impl, p, n));
			p += n;
			len -= n;
		}
	}
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return swap16(fold64(total));
#else
	return fold64(total);
#endif
}

/**
 * best_impl() - the fastest implementation this CPU runs
 *
 * Return: PC_CSUM_AVX2 or PC_CSUM_SCALAR
 */
static int best_impl(void)
{
	return have_avx2() ? PC_CSUM_AVX2 : PC_CSUM_SCALAR;
}

/**
 * pc_csum_impls() - which checksum implementations this CPU can run
 *
 * Return: bit mask, bit (1 << PC_CSUM_x) set for each available implementation
 */
int pc_csum_impls(void)
{
	return (1 << PC_CSUM_SCALAR) | (have_avx2() ? 1 << PC_CSUM_AVX2 : 0);
}

/**
 * pc_csum_partial_impl() - pc_csum_partial() with a chosen implementation, for tests and benches
 * @impl:	PC_CSUM_AUTO, PC_CSUM_SCALAR or PC_CSUM_AVX2
 * @buf:	data, any alignment
 * @len:	length in bytes
 * @init:	partial sum to continue from
 *
 * Return: partial sum in 0..0xffff, -EOPNOTSUPP if @impl is unknown or this CPU cannot run it
 */
int pc_csum_partial_impl(int impl, const void *buf, size_t len, uint32_t init)
{
	if (impl == PC_CSUM_AUTO)
		impl = best_impl();
	if (impl < PC_CSUM_SCALAR || impl > PC_CSUM_AVX2 || !(pc_csum_impls() & (1 << impl)))
		return -EOPNOTSUPP;
	return (int)fold64((uint64_t)sum_be(impl, buf, len) + init);
}

/**
 * pc_csum_partial() - one's complement sum of a buffer, continuing from a previous sum
 * @buf:	data, any alignment
 * @len:	length in bytes, any size
 * @init:	partial sum of the data before @buf (0 to start); only meaningful if that data had
 *		an even length
 *
 * Return: partial sum in 0..0xffff (folded, not complemented; see pc_csum_fold())
 */
uint32_t pc_csum_partial(const void *buf, size_t len, uint32_t init)
{
	return fold64((uint64_t)sum_be(best_impl(), buf, len) + init);
}

/**
 * pc_csum_iov() - one's complement sum of the concatenation of an array of buffers
 * @iov:	segments, each of any length and alignment (zero-length segments are fine)
 * @n:		number of segments
 * @init:	partial sum to continue from (as for pc_csum_partial())
 *
 * Return: partial sum in 0..0xffff of all segments laid end to end
 */
uint32_t pc_csum_iov(const struct iovec *iov, size_t n, uint32_t init)
{
	int impl = best_impl();
	uint64_t total = init;
	size_t i, off = 0;

	for (i = 0; i < n; i++) {
		uint32_t s = sum_be(impl, iov[i].iov_base, iov[i].iov_len);

		/* bytes of a segment starting at an odd offset sit in the other byte lane */
		total += (off & 1) ? swap16(s) : s;
		off += iov[i].iov_len;
	}
	return fold64(total);
}

/**
 * pc_csum_fold() - finish a checksum: fold a partial sum to 16 bits and complement it
 * @sum:	partial sum (any 32-bit value congruent to the sum modulo 0xffff)
 *
 * Return: checksum field value, host integer whose big-endian encoding goes on the wire; 0
 *	   when verifying data that includes a correct checksum
 */
uint16_t pc_csum_fold(uint32_t sum)
{
	return (uint16_t)~fold64(sum);
}

/**
 * pc_csum_ipv4_header() - checksum of an IPv4 header, ignoring its current checksum field
 * @hdr:	IPv4 header, options included
 * @len:	header length in bytes (IHL * 4): 20..60, a multiple of 4
 *
 * Return: value for the header checksum field (bytes 10-11), -EINVAL on a bad @len
 */
int pc_csum_ipv4_header(const void *hdr, size_t len)
{
	const unsigned char *p = hdr;
	uint32_t s;

	if (len < 20 || len > 60 || len % 4)
		return -EINVAL;
	s = pc_csum_partial(p, 10, 0);
	s = pc_csum_partial(p + 12, len - 12, s);
	return pc_csum_fold(s);
}

/**
 * pc_csum_pseudo_ipv4() - partial sum of an IPv4 pseudo-header (RFC 793, RFC 768)
 * @src:	source address, 4 bytes in network order
 * @dst:	destination address, 4 bytes in network order
 * @proto:	protocol number
 * @len:	L4 length in bytes (header and payload)
 *
 * Return: partial sum in 0..0xffff, to pass as @init when summing the L4 segment
 */
uint32_t pc_csum_pseudo_ipv4(const void *src, const void *dst, uint8_t proto, uint16_t len)
{
	uint64_t s = pc_csum_partial(src, 4, 0);

	s += pc_csum_partial(dst, 4, 0);
	s += proto;
	s += len;
	return fold64(s);
}

/**
 * pc_csum_pseudo_ipv6() - partial sum of an IPv6 pseudo-header (RFC 8200, section 8.1)
 * @src:	source address, 16 bytes in network order
 * @dst:	destination address, 16 bytes in network order
 * @proto:	upper-layer protocol number (next header)
 * @len:	upper-layer packet length in bytes (32 bits: jumbograms allowed)
 *
 * Return: partial sum in 0..0xffff, to pass as @init when summing the L4 segment
 */
uint32_t pc_csum_pseudo_ipv6(const void *src, const void *dst, uint8_t proto, uint32_t len)
{
	uint64_t s = pc_csum_partial(src, 16, 0);

	s += pc_csum_partial(dst, 16, 0);
	s += proto;
	s += len >> 16;
	s += len & 0xffff;
	return fold64(s);
}

/**
 * l4_field() - offset of the checksum field of a protocol carried with a pseudo-header
 * @proto:	protocol number
 * @v6:		true over IPv6 (ICMPv6 allowed), false over IPv4
 *
 * Return: offset in bytes, -EPROTONOSUPPORT for a protocol not handled here (ICMP over IPv4
 *	   has no pseudo-header: see pc_csum_icmp4())
 */
static int l4_field(uint8_t proto, bool v6)
{
	switch (proto) {
	case PROTO_TCP:
		return 16;
	case PROTO_UDP:
		return 6;
	case PROTO_ICMPV6:
		return v6 ? 2 : -EPROTONOSUPPORT;
	default:
		return -EPROTONOSUPPORT;
	}
}

/**
 * l4_finish() - sum an L4 segment around its checksum field and complement
 * @proto:	protocol number, its field offset @field already validated
 * @field:	offset of the checksum field
 * @l4:		segment (header and payload)
 * @len:	segment length, at least @field + 2
 * @init:	partial sum of the pseudo-header (0 for none)
 *
 * Return: checksum field value; for UDP a computed 0 becomes 0xffff (RFC 768, RFC 8200)
 */
static int l4_finish(uint8_t proto, int field, const void *l4, size_t len, uint32_t init)
{
	const unsigned char *p = l4;
	uint32_t s;
	uint16_t c;

	s = pc_csum_partial(p, (size_t)field, init);
	s = pc_csum_partial(p + field + 2, len - (size_t)field - 2, s);	/* even offset */
	c = pc_csum_fold(s);
	if (proto == PROTO_UDP && c == 0)
		c = 0xffff;
	return c;
}

/**
 * pc_csum_l4_ipv4() - checksum of a TCP or UDP segment over IPv4
 * @src:	source address, 4 bytes in network order
 * @dst:	destination address, 4 bytes in network order
 * @proto:	6 (TCP) or 17 (UDP); ICMP has no pseudo-header, see pc_csum_icmp4()
 * @l4:		segment: L4 header and payload, any alignment
 * @len:	segment length in bytes
 *
 * Return: value for the segment's checksum field, ignoring what the field holds now;
 *	   -EPROTONOSUPPORT for another protocol, -EINVAL if @len does not cover the field,
 *	   -EMSGSIZE if @len exceeds 65535
 */
int pc_csum_l4_ipv4(const void *src, const void *dst, uint8_t proto, const void *l4, size_t len)
{
	int field = l4_field(proto, false);

	if (field < 0)
		return field;
	if (len < (size_t)field + 2)
		return -EINVAL;
	if (len > 0xffff)
		return -EMSGSIZE;
	return l4_finish(proto, field, l4, len,
			 pc_csum_pseudo_ipv4(src, dst, proto, (uint16_t)len));
}

/**
 * pc_csum_l4_ipv6() - checksum of a TCP, UDP or ICMPv6 segment over IPv6
 * @src:	source address, 16 bytes in network order
 * @dst:	destination address, 16 bytes in network order
 * @proto:	6 (TCP), 17 (UDP) or 58 (ICMPv6)
 * @l4:		segment: L4 header and payload, any alignment
 * @len:	segment length in bytes
 *
 * Return: value for the segment's checksum field, ignoring what the field holds now;
 *	   -EPROTONOSUPPORT for another protocol, -EINVAL if @len does not cover the field,
 *	   -EMSGSIZE if @len exceeds 2^32 - 1
 */
int pc_csum_l4_ipv6(const void *src, const void *dst, uint8_t proto, const void *l4, size_t len)
{
	int field = l4_field(proto, true);

	if (field < 0)
		return field;
	if (len < (size_t)field + 2)
		return -EINVAL;
	if ((uint64_t)len > 0xffffffffULL)
		return -EMSGSIZE;
	return l4_finish(proto, field, l4, len,
			 pc_csum_pseudo_ipv6(src, dst, proto, (uint32_t)len));
}

/**
 * pc_csum_icmp4() - checksum of an ICMP (IPv4) message: no pseudo-header (RFC 792)
 * @icmp:	message: header and data, any alignment
 * @len:	message length in bytes, at least 4
 *
 * Return: value for the checksum field (bytes 2-3), ignoring what it holds now; -EINVAL if
 *	   @len is below 4
 */
int pc_csum_icmp4(const void *icmp, size_t len)
{
	if (len < 4)
		return -EINVAL;
	return l4_finish(PROTO_ICMP, 2, icmp, len, 0);
}

/**
 * pc_bench_csum() - checksum the same buffer repeatedly, for benchmarks without call overhead
 * @impl:	PC_CSUM_AUTO, PC_CSUM_SCALAR or PC_CSUM_AVX2
 * @buf:	data
 * @len:	length in bytes
 * @reps:	number of repetitions
 *
 * Return: folded sum of all results (keeps the work observable), -EOPNOTSUPP as
 *	   pc_csum_partial_impl()
 */
int pc_bench_csum(int impl, const void *buf, size_t len, unsigned int reps)
{
	uint64_t acc = 0;
	unsigned int i;
	int s;

	for (i = 0; i < reps; i++) {
		__asm__ __volatile__("" : : "r"(buf) : "memory");	/* defeat hoisting */
		s = pc_csum_partial_impl(impl, buf, len, 0);
		if (s < 0)
			return s;
		acc += (uint32_t)s;
	}
	return (int)fold64(acc);
}

/**
 * pc_bench_memcpy() - copy a buffer repeatedly, the yardstick for pc_bench_csum()
 * @dst:	destination, @len bytes, not overlapping @src
 * @src:	source
 * @len:	length in bytes
 * @reps:	number of repetitions
 *
 * Return: 0
 */
int pc_bench_memcpy(void *dst, const void *src, size_t len, unsigned int reps)
{
	unsigned int i;

	for (i = 0; i < reps; i++) {
		memcpy(dst, src, len);
		__asm__ __volatile__("" : : "r"(dst) : "memory");	/* copy must happen */
	}
	return 0;
}
