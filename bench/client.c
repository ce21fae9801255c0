/* Load client for the benchmark: plain TCP/UNIX, or WebSocket (RFC 6455, masked binary
 * frames) to a fixed URL (websockify) or to a URL minted per connection over the broker's
 * REST API. Every workload prints one JSON object on stdout, including the client's own
 * CPU time (getrusage), so the driver can show the client was not the bottleneck.
 *
 * TARGET:  tcp:HOST:PORT | unix:PATH | ws://HOST:PORT/PATH | mint:http://HOST:PORT/api/v1/domains/NAME/console
 *          (mint: needs BENCH_API_KEY in the environment)
 * usage:   client down  TARGET BYTES
 *          client up    TARGET BYTES FRAME_SIZE
 *          client flood TARGET COUNT FRAME_SIZE
 *          client rtt   TARGET COUNT SIZE
 *          client setup TARGET COUNT
 *          client conc  TARGET SESSIONS SECONDS SIZE   (prints {"opened"...}, waits for a line on
 *                                                      stdin, runs, prints results, waits for a
 *                                                      line, closes)
 * The backend protocol (greeting, 'D'/'S'/'E' commands) is described in backend.c.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GREETING_LEN 12
#define RBUF (256 * 1024)

enum kind { TCP, UNIX, WS, MINT };

struct target {
    enum kind kind;
    char host[64];
    int port;
    char path[512]; /* UNIX path, WebSocket path+query, or the REST path to mint at */
    const char *key;
};

struct conn {
    int fd, ws, closed;
    uint8_t hdr[14];
    int hdr_len;
    uint64_t left; /* payload bytes left in the current frame */
    int counting;  /* is the current frame data (not a control frame)? */
    /* conc: */
    uint64_t got;
    double sent_at;
};

struct timing { double mint, accepted, first; };

static struct target T;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static uint32_t rand32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void die(const char *what) {
    fprintf(stderr, "client: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static void parse_hostport(const char *s, char *host, int *port, const char **rest) {
    const char *colon = strchr(s, ':');
    const char *slash = strchr(s, '/');
    if (!colon) die("target needs HOST:PORT");
    snprintf(host, 64, "%.*s", (int)(colon - s), s);
    *port = atoi(colon + 1);
    *rest = slash ? slash : "/";
}

static void parse_target(const char *spec) {
    const char *rest;
    if (!strncmp(spec, "tcp:", 4)) {
        T.kind = TCP;
        parse_hostport(spec + 4, T.host, &T.port, &rest);
    } else if (!strncmp(spec, "unix:", 5)) {
        T.kind = UNIX;
        snprintf(T.path, sizeof T.path, "%s", spec + 5);
    } else if (!strncmp(spec, "ws://", 5)) {
        T.kind = WS;
        parse_hostport(spec + 5, T.host, &T.port, &rest);
        snprintf(T.path, sizeof T.path, "%s", rest);
    } else if (!strncmp(spec, "mint:http://", 12)) {
        T.kind = MINT;
        parse_hostport(spec + 12, T.host, &T.port, &rest);
        snprintf(T.path, sizeof T.path, "%s", rest);
        T.key = getenv("BENCH_API_KEY");
        if (!T.key) die("mint: targets need BENCH_API_KEY");
    } else {
        errno = 0;
        die("unknown target");
    }
}

static int tcp_connect(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int unix_connect(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%.107s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
    return fd;
}

static int write_all(int fd, const void *buf, size_t len) {
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { /* non-blocking socket in conc: wait for room */
                fd_set w; FD_ZERO(&w); FD_SET(fd, &w);
                select(fd + 1, NULL, &w, NULL, NULL);
                continue;
            }
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

/* Read an HTTP response head; returns total bytes read (head + whatever followed), head length in *head. */
static int read_head(int fd, char *buf, int cap, int *head) {
    int len = 0;
    while (len < cap - 1) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0) return -1;
        len += n;
        buf[len] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (end) { *head = end + 4 - buf; return len; }
    }
    return -1;
}

/* POST to the broker's REST API for a one-use token; writes the WebSocket path+query to `path`. */
static int mint(char *path, size_t cap) {
    int fd = tcp_connect(T.host, T.port);
    if (fd < 0) return -1;
    char req[1024], buf[8192];
    const char *body = "{\"ttl\": 600}";
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     T.path, T.host, T.port, T.key, strlen(body), body);
    int head, len;
    if (write_all(fd, req, n) < 0 || (len = read_head(fd, buf, sizeof buf, &head)) < 0) { close(fd); return -1; }
    if (strncmp(buf, "HTTP/1.1 201", 12)) {
        fprintf(stderr, "client: mint refused: %.*s\n", head, buf);
        close(fd);
        return -1;
    }
    char *cl = strcasestr(buf, "content-length:");
    int want = head + (cl ? atoi(cl + 15) : 0);
    while (len < want && len < (int)sizeof buf - 1) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r <= 0) break;
        len += r;
    }
    buf[len] = 0;
    close(fd);
    char *u = strstr(buf + head, "\"websocket_url\"");
    if (!u || !(u = strstr(u, "ws://")) || !(u = strchr(u + 5, '/'))) return -1;
    char *end = strchr(u, '"');
    if (!end) return -1;
    snprintf(path, cap, "%.*s", (int)(end - u), u);
    return 0;
}

/* Count the payload bytes in what the server sent; notices close frames. */
static uint64_t feed(struct conn *c, const uint8_t *p, size_t n) {
    if (!c->ws) return n;
    uint64_t payload = 0;
    while (n > 0) {
        if (c->left > 0) {
            uint64_t take = n < c->left ? n : c->left;
            if (c->counting) payload += take;
            c->left -= take;
            p += take;
            n -= take;
            continue;
        }
        c->hdr[c->hdr_len++] = *p++;
        n--;
        if (c->hdr_len < 2) continue;
        int len7 = c->hdr[1] & 0x7f;
        int need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((c->hdr[1] & 0x80) ? 4 : 0);
        if (c->hdr_len < need) continue;
        uint64_t len = len7;
        if (len7 == 126) len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
        if (len7 == 127) { len = 0; for (int i = 2; i < 10; i++) len = len << 8 | c->hdr[i]; }
        int opcode = c->hdr[0] & 0x0f;
        if (opcode == 8) c->closed = 1;
        c->counting = opcode < 8;
        c->left = len;
        c->hdr_len = 0;
    }
    return payload;
}

/* Read once; payload bytes, or -1 at the end of the connection. */
static int64_t conn_read(struct conn *c) {
    static __thread uint8_t buf[RBUF];
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n <= 0) return (n < 0 && errno == EAGAIN) ? 0 : -1;
    uint64_t payload = feed(c, buf, n);
    return c->closed && payload == 0 ? -1 : (int64_t)payload;
}

static int wait_payload(struct conn *c, uint64_t need) {
    uint64_t got = 0;
    while (got < need) {
        int64_t n = conn_read(c);
        if (n < 0) return -1;
        got += n;
    }
    return 0;
}

static void mask_copy(uint8_t *out, const uint8_t *in, size_t len, uint32_t mask) {
    uint64_t m8 = (uint64_t)mask << 32 | mask, w;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) { memcpy(&w, in + i, 8); w ^= m8; memcpy(out + i, &w, 8); }
    for (; i < len; i++) out[i] = in[i] ^ ((uint8_t *)&mask)[i & 3];
}

/* A masked binary frame (client to server) in `out`; returns its length. Raw bytes when not ws. */
static size_t frame(int ws, uint8_t *out, const uint8_t *payload, size_t len, int opcode) {
    if (!ws) { memcpy(out, payload, len); return len; }
    size_t h = 0;
    out[h++] = 0x80 | opcode;
    if (len < 126) out[h++] = 0x80 | len;
    else if (len < 65536) { out[h++] = 0x80 | 126; out[h++] = len >> 8; out[h++] = len; }
    else { out[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) out[h++] = (uint64_t)len >> (8 * i); }
    uint32_t mask = rand32();
    memcpy(out + h, &mask, 4);
    h += 4;
    mask_copy(out + h, payload, len, mask);
    return h + len;
}

static int send_msg(struct conn *c, const void *payload, size_t len) {
    uint8_t out[14 + 1024];
    if (len > 1024) return -1;
    return write_all(c->fd, out, frame(c->ws, out, payload, len, 2));
}

static int send_cmd(struct conn *c, char mode, uint64_t arg) {
    uint8_t cmd[9] = {(uint8_t)mode};
    memcpy(cmd + 1, &arg, 8);
    return send_msg(c, cmd, 9);
}

static void conn_close(struct conn *c) {
    if (c->ws) {
        uint8_t code[2] = {0x03, 0xe8}, out[16]; /* 1000 */
        write(c->fd, out, frame(1, out, code, 2, 8));
    }
    close(c->fd);
    c->fd = -1;
}

/* Connect, mint and upgrade as needed, and wait for the backend's greeting. */
static int open_session(struct conn *c, struct timing *tm) {
    double t0 = now();
    char path[600];
    memset(c, 0, sizeof *c);
    c->fd = -1;
    snprintf(path, sizeof path, "%s", T.path);
    if (T.kind == MINT && mint(path, sizeof path) < 0) return -1;
    if (tm) tm->mint = now() - t0;
    c->fd = T.kind == UNIX ? unix_connect(T.path) : tcp_connect(T.host, T.port);
    if (c->fd < 0) return -1;
    int leftover = 0;
    char buf[4096];
    int head = 0;
    if (T.kind == WS || T.kind == MINT) {
        c->ws = 1;
        char req[1024];
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         "Sec-WebSocket-Protocol: binary\r\n\r\n",
                         path, T.host, T.port);
        int len;
        if (write_all(c->fd, req, n) < 0 || (len = read_head(c->fd, buf, sizeof buf, &head)) < 0) goto fail;
        if (strncmp(buf, "HTTP/1.1 101", 12)) goto fail;
        leftover = len - head;
    }
    if (tm) tm->accepted = now() - t0;
    uint64_t got = leftover ? feed(c, (uint8_t *)buf + head, leftover) : 0;
    if (got < GREETING_LEN && wait_payload(c, GREETING_LEN - got) < 0) goto fail;
    if (tm) tm->first = now() - t0;
    return 0;
fail:
    close(c->fd);
    c->fd = -1;
    return -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *sorted, size_t n, double q) {
    if (n == 0) return -1;
    size_t i = (size_t)(q * n);
    return sorted[i >= n ? n - 1 : i];
}

static void print_lat(const char *name, double *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_double);
    printf("\"%s_p50_us\": %.1f, \"%s_p99_us\": %.1f, ", name, pct(v, n, 0.5) * 1e6, name, pct(v, n, 0.99) * 1e6);
}

static void open_or_die(struct conn *c, struct timing *tm) {
    if (open_session(c, tm) < 0) die("cannot open a session");
}

static int run_down(uint64_t bytes) {
    struct conn c;
    open_or_die(&c, NULL);
    double t0 = now(), cpu0 = cpu_seconds();
    if (send_cmd(&c, 'D', bytes) < 0 || wait_payload(&c, bytes) < 0) die("down");
    double dt = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"bytes\": %lu, \"seconds\": %.6f, \"mib_s\": %.2f, \"client_cpu_s\": %.4f}\n", bytes, dt, bytes / dt / 1048576, cpu);
    conn_close(&c);
    return 0;
}

static int run_up(uint64_t bytes, size_t fsize) {
    struct conn c;
    open_or_die(&c, NULL);
    uint8_t *payload = malloc(fsize), *out = malloc(16 * (fsize + 14));
    for (size_t i = 0; i < fsize; i++) payload[i] = rand32();
    double t0 = now(), cpu0 = cpu_seconds();
    if (send_cmd(&c, 'S', bytes) < 0) die("up");
    for (uint64_t sent = 0; sent < bytes;) {
        size_t len = 0;
        for (int k = 0; k < 16 && sent < bytes; k++) {
            size_t n = bytes - sent < fsize ? bytes - sent : fsize;
            len += frame(c.ws, out + len, payload, n, 2);
            sent += n;
        }
        if (write_all(c.fd, out, len) < 0) die("up: write");
    }
    if (wait_payload(&c, 1) < 0) die("up: no ack");
    double dt = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"bytes\": %lu, \"seconds\": %.6f, \"mib_s\": %.2f, \"client_cpu_s\": %.4f}\n", bytes, dt, bytes / dt / 1048576, cpu);
    conn_close(&c);
    return 0;
}

static int run_flood(uint64_t count, size_t size) {
    struct conn c;
    open_or_die(&c, NULL);
    enum { BLOCK = 4096 };
    uint8_t payload[256], *block = malloc(BLOCK * (size + 14));
    for (size_t i = 0; i < size; i++) payload[i] = rand32();
    size_t block_len = 0;
    for (int k = 0; k < BLOCK; k++) block_len += frame(c.ws, block + block_len, payload, size, 2);
    size_t per = block_len / BLOCK; /* same frame length for every message */
    double t0 = now(), cpu0 = cpu_seconds();
    if (send_cmd(&c, 'S', count * size) < 0) die("flood");
    for (uint64_t sent = 0; sent < count;) {
        uint64_t n = count - sent < BLOCK ? count - sent : BLOCK;
        if (write_all(c.fd, block, n * per) < 0) die("flood: write");
        sent += n;
    }
    if (wait_payload(&c, 1) < 0) die("flood: no ack");
    double dt = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"messages\": %lu, \"seconds\": %.6f, \"msg_s\": %.0f, \"client_cpu_s\": %.4f}\n", count, dt, count / dt, cpu);
    conn_close(&c);
    return 0;
}

static int run_rtt(int count, size_t size) {
    struct conn c;
    open_or_die(&c, NULL);
    uint8_t payload[1024];
    for (size_t i = 0; i < size; i++) payload[i] = rand32();
    double *lat = malloc(count * sizeof *lat), cpu0 = 0, t0 = 0;
    if (send_cmd(&c, 'E', 0) < 0) die("rtt");
    for (int i = -100; i < count; i++) { /* 100 warm-up round trips */
        if (i == 0) { cpu0 = cpu_seconds(); t0 = now(); }
        double t = now();
        if (send_msg(&c, payload, size) < 0 || wait_payload(&c, size) < 0) die("rtt: echo");
        if (i >= 0) lat[i] = now() - t;
    }
    double dt = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"count\": %d, ", count);
    print_lat("rtt", lat, count);
    printf("\"seconds\": %.6f, \"client_cpu_s\": %.4f}\n", dt, cpu);
    conn_close(&c);
    return 0;
}

static int run_setup(int count) {
    double *mint_t = malloc(count * sizeof(double)), *acc = malloc(count * sizeof(double)),
           *first = malloc(count * sizeof(double)), *after_mint = malloc(count * sizeof(double));
    struct conn c;
    double cpu0 = cpu_seconds(), t0 = now();
    for (int i = 0; i < count; i++) {
        struct timing tm;
        open_or_die(&c, &tm);
        mint_t[i] = tm.mint;
        acc[i] = tm.accepted;
        first[i] = tm.first;
        after_mint[i] = tm.first - tm.mint;
        conn_close(&c);
    }
    double dt = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"count\": %d, ", count);
    print_lat("mint", mint_t, count);
    print_lat("accepted", acc, count);
    print_lat("first_byte", first, count);
    print_lat("connect_to_first_byte", after_mint, count);
    printf("\"seconds\": %.6f, \"client_cpu_s\": %.4f}\n", dt, cpu);
    return 0;
}

/* conc: open SESSIONS sessions (a few threads, each blocking), then a closed loop of echoes. */
struct opener { struct conn *conns; int from, to, failed; };

static void *open_range(void *arg) {
    struct opener *o = arg;
    for (int i = o->from; i < o->to; i++) {
        if (open_session(&o->conns[i], NULL) < 0 || send_cmd(&o->conns[i], 'E', 0) < 0) {
            if (o->conns[i].fd >= 0) close(o->conns[i].fd);
            o->conns[i].fd = -1;
            o->failed++;
        }
    }
    return NULL;
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) exit(0);
}

static int run_conc(int sessions, double seconds, size_t size) {
    struct conn *conns = calloc(sessions, sizeof *conns);
    enum { THREADS = 16 };
    struct opener op[THREADS];
    pthread_t th[THREADS];
    double t_open = now();
    for (int k = 0; k < THREADS; k++) {
        op[k] = (struct opener){conns, sessions * k / THREADS, sessions * (k + 1) / THREADS, 0};
        pthread_create(&th[k], NULL, open_range, &op[k]);
    }
    int failed = 0;
    for (int k = 0; k < THREADS; k++) { pthread_join(th[k], NULL); failed += op[k].failed; }
    t_open = now() - t_open;
    printf("{\"opened\": %d, \"failed\": %d, \"open_seconds\": %.3f}\n", sessions - failed, failed, t_open);
    fflush(stdout);
    wait_line();

    int ep = epoll_create1(0);
    uint8_t payload[1024];
    for (size_t i = 0; i < size; i++) payload[i] = rand32();
    size_t cap = 1 << 20, n = 0;
    double *lat = malloc(cap * sizeof *lat);
    double t0 = now(), cpu0 = cpu_seconds(), deadline = t0 + seconds;
    int active = 0;
    for (int i = 0; i < sessions; i++) {
        struct conn *c = &conns[i];
        if (c->fd < 0) continue;
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        c->sent_at = now();
        if (send_msg(c, payload, size) == 0) active++;
    }
    struct epoll_event evs[512];
    int lost = 0;
    while (active > 0) {
        int k = epoll_wait(ep, evs, 512, 100);
        double t = now();
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            int64_t r = conn_read(c);
            if (r < 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); active--; lost++; continue; }
            c->got += r;
            if (c->got < size) continue;
            c->got -= size;
            if (n == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
            lat[n++] = t - c->sent_at;
            if (t >= deadline) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); active--; continue; }
            c->sent_at = t;
            send_msg(c, payload, size);
        }
        if (t > deadline + 10) break; /* stuck sessions: give up on them */
    }
    double dt = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"messages\": %zu, \"seconds\": %.6f, \"msg_s\": %.0f, \"lost\": %d, ", n, dt, n / dt, lost);
    print_lat("rtt", lat, n);
    printf("\"client_cpu_s\": %.4f}\n", cpu);
    fflush(stdout);
    wait_line();
    for (int i = 0; i < sessions; i++)
        if (conns[i].fd >= 0) conn_close(&conns[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: client down|up|flood|rtt|setup|conc TARGET ARGS...\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    rng ^= (uint64_t)getpid() << 20 ^ (uint64_t)(now() * 1e9);
    parse_target(argv[2]);
    const char *mode = argv[1];
    if (!strcmp(mode, "down")) return run_down(strtoull(argv[3], NULL, 10));
    if (!strcmp(mode, "up") && argc > 4) return run_up(strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (!strcmp(mode, "flood") && argc > 4) return run_flood(strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (!strcmp(mode, "rtt") && argc > 4) return run_rtt(atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(mode, "setup")) return run_setup(atoi(argv[3]));
    if (!strcmp(mode, "conc") && argc > 5) return run_conc(atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
    fprintf(stderr, "client: bad arguments\n");
    return 2;
}
