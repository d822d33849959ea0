/*
 * ringpeer: a usbif urb ring peer built from xen/io/ring.h's own macros,
 * for ring/crosscheck_test.go. It shares one page (an mmap'd file) with
 * the Go side and takes turns with it over two pipes (fd 3 in, fd 4 out),
 * so each side can check the other's notify decisions exactly.
 *
 *   ringpeer front|back PAGEFILE SEED START TOTAL
 *
 * Turn message: {count, notify, done} as three u32. The front produces
 * TOTAL requests of random bytes; the back answers each with
 * actual_length = fnv(request bytes), which the front verifies.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
/* ring.h leaves the barriers to the includer, as the kernel and QEMU define them. */
#define mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/xen.h>
#include <xen/io/usbif.h>

#define FAIL(...) do { fprintf(stderr, "ringpeer: " __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } while (0)

static uint32_t rng;
static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5; return rng; }
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

static int32_t fnv(const void *p, size_t n) {
	const uint8_t *b = p; uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 16777619u; }
	return (int32_t)(h & 0x7fffffff);
}

struct msg { uint32_t count, notify, done; };
static void put(struct msg m) { if (write(4, &m, sizeof m) != sizeof m) FAIL("write pipe"); }
static struct msg get(void) {
	struct msg m; size_t got = 0;
	while (got < sizeof m) { ssize_t n = read(3, (char *)&m + got, sizeof m - got); if (n <= 0) FAIL("read pipe"); got += n; }
	return m;
}

static void front(usbif_urb_sring_t *s, uint32_t start, uint32_t total) {
	usbif_urb_front_ring_t r;
	if (start == 0) XEN_FRONT_RING_INIT(&r, s, 4096); else FRONT_RING_ATTACH(&r, s, start, 4096);
	if (RING_SIZE(&r) != 16) FAIL("ring size %u", RING_SIZE(&r));
	int32_t want[65536]; uint8_t busy[65536]; memset(busy, 0, sizeof busy);
	/* Initial indices are known; the page may already have moved on. */
	uint32_t sent = 0, done = 0, outstanding = 0, seen = start, myevent = start + 1;
	int first = 1;
	for (;;) {
		if (!first) {
			struct msg m = get();
			RING_IDX np = s->rsp_prod;
			int exp = m.count ? ((RING_IDX)(np - myevent) < (RING_IDX)(np - seen)) : 0;
			if ((int)m.notify != exp) FAIL("back's notify %u, ring.h says %d (rsp_prod %u->%u, rsp_event %u)", m.notify, exp, seen, np, myevent);
			if (np - seen != m.count) FAIL("back said %u responses, rsp_prod moved %u", m.count, np - seen);
		}
		first = 0;
		for (;;) {
			RING_IDX rp = s->rsp_prod;
			xen_rmb();
			if (RING_RESPONSE_PROD_OVERFLOW(&r, rp)) FAIL("response overflow");
			RING_IDX i;
			for (i = r.rsp_cons; i != rp; i++) {
				usbif_urb_response_t rsp;
				RING_COPY_RESPONSE(&r, i, &rsp);
				if (!busy[rsp.id]) FAIL("response for id %u not in flight", rsp.id);
				if (rsp.actual_length != want[rsp.id]) FAIL("id %u: actual_length %d, want %d", rsp.id, rsp.actual_length, want[rsp.id]);
				busy[rsp.id] = 0; outstanding--; done++;
			}
			r.rsp_cons = i;
			if (below(2)) break; /* sometimes leave rsp_event stale */
			int more;
			RING_FINAL_CHECK_FOR_RESPONSES(&r, more);
			if (!more) break;
		}
		seen = s->rsp_prod; myevent = s->rsp_event;
		if (done == total) { put((struct msg){0, 0, 1}); return; }
		uint32_t k = below(RING_FREE_REQUESTS(&r) + 1);
		if (k > total - sent) k = total - sent;
		for (uint32_t j = 0; j < k; j++) {
			usbif_urb_request_t *q = RING_GET_REQUEST(&r, r.req_prod_pvt);
			uint8_t b[sizeof *q];
			for (size_t x = 0; x < sizeof b; x++) b[x] = rnd();
			uint16_t id = (uint16_t)(start + sent);
			memcpy(b, &id, 2);
			if (busy[id]) FAIL("id %u reused while in flight", id);
			memcpy(q, b, sizeof b);
			want[id] = fnv(b, sizeof b); busy[id] = 1;
			r.req_prod_pvt++; sent++; outstanding++;
		}
		int notify = 0;
		if (k) RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r, notify);
		put((struct msg){k, (uint32_t)notify, 0});
	}
}

static void back(usbif_urb_sring_t *s, uint32_t start) {
	usbif_urb_back_ring_t r;
	BACK_RING_ATTACH(&r, s, start, 4096);
	uint16_t pid[16]; int32_t psum[16]; uint32_t npend = 0;
	RING_IDX seen = start; /* the front may have pushed already */
	for (;;) {
		struct msg m = get();
		if (m.done) { if (npend || r.req_cons != s->req_prod) FAIL("done with %u pending", npend); return; }
		RING_IDX np = s->req_prod, ev = s->req_event;
		int exp = m.count ? ((RING_IDX)(np - ev) < (RING_IDX)(np - seen)) : 0;
		if ((int)m.notify != exp) FAIL("front's notify %u, ring.h says %d (req_prod %u->%u, req_event %u)", m.notify, exp, seen, np, ev);
		if (np - seen != m.count) FAIL("front said %u requests, req_prod moved %u", m.count, np - seen);
		for (;;) {
			RING_IDX rp = s->req_prod;
			xen_rmb();
			if (RING_REQUEST_PROD_OVERFLOW(&r, rp)) FAIL("request overflow");
			uint32_t take = below(rp - r.req_cons + 1);
			RING_IDX rc = r.req_cons;
			while (take-- && rc != rp && !RING_REQUEST_CONS_OVERFLOW(&r, rc)) {
				usbif_urb_request_t q;
				RING_COPY_REQUEST(&r, rc, &q);
				pid[npend] = q.id; psum[npend] = fnv(&q, sizeof q); npend++;
				rc++;
			}
			r.req_cons = rc;
			if (below(2)) break;
			int more;
			RING_FINAL_CHECK_FOR_REQUESTS(&r, more);
			if (!more) break;
		}
		seen = s->req_prod;
		uint32_t n = below(npend + 1);
		if (m.count == 0 && npend && !n) n = 1; /* progress when the front is stuck */
		for (uint32_t j = 0; j < n; j++) {
			uint32_t pick = below(npend);
			usbif_urb_response_t *rsp = RING_GET_RESPONSE(&r, r.rsp_prod_pvt);
			memset(rsp, 0, sizeof *rsp);
			rsp->id = pid[pick]; rsp->actual_length = psum[pick]; rsp->status = -(int32_t)below(120);
			r.rsp_prod_pvt++;
			pid[pick] = pid[npend - 1]; psum[pick] = psum[npend - 1]; npend--;
		}
		int notify = 0;
		if (n) RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r, notify);
		put((struct msg){n, (uint32_t)notify, 0});
	}
}

int main(int argc, char **argv) {
	if (argc != 6) FAIL("usage: ringpeer front|back PAGEFILE SEED START TOTAL");
	int fd = open(argv[2], O_RDWR);
	if (fd < 0) FAIL("open %s", argv[2]);
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) FAIL("mmap");
	rng = (uint32_t)strtoul(argv[3], NULL, 0) | 1;
	uint32_t start = (uint32_t)strtoul(argv[4], NULL, 0), total = (uint32_t)strtoul(argv[5], NULL, 0);
	if (strcmp(argv[1], "front") == 0) front(p, start, total);
	else back(p, start);
	return 0;
}
