/* bench/pingpong.c -- one connection, one message back and forth, as fast as it goes: the upper
 * bound of what SMC can change for a request/response hop, with no proxy in between.
 *
 *   pingpong --kind tcp|smc|af-smc --client IP --server IP --port N
 *            [--rounds N] [--warmup N] [--size BYTES]
 *
 * One process: a thread serves an echo listener on SERVER:PORT, the main thread connects from
 * CLIENT (bound), sends SIZE bytes, waits for the SIZE bytes back, ROUNDS times after WARMUP
 * untimed ones. Both ends use the same kind of socket: tcp (AF_INET), smc (AF_INET with
 * IPPROTO_SMC, Linux >= 6.11) or af-smc (AF_SMC). TCP_NODELAY on both ends. Prints one JSON
 * object: round-trip percentiles in microseconds, the connect time, and the CPU time of the
 * whole process (both ends) per round trip. Whether a connection really was SMC-D is for the
 * caller to prove (smc_diag, the kernel's SMC-D byte counters).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define AF_SMC_ 43
#define IPPROTO_SMC_ 256

static const char *kind = "tcp";
static size_t size = 64;
static int listener;

static void die(const char *what) {
  fprintf(stderr, "pingpong: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int make_socket(void) {
  int fd;
  if (!strcmp(kind, "tcp"))
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  else if (!strcmp(kind, "smc"))
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_SMC_);
  else
    fd = socket(AF_SMC_, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  return fd;
}

static void nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one)) die("TCP_NODELAY");
}

static struct sockaddr_in addr(const char *ip, int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    fprintf(stderr, "pingpong: bad address %s\n", ip);
    exit(2);
  }
  return a;
}

/* whole messages only: a short read or write is continued */
static int read_full(int fd, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r == 0) return 0;
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    got += r;
  }
  return 1;
}

static void write_full(int fd, const char *buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t w = write(fd, buf + put, n - put);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    put += w;
  }
}

static void *serve(void *arg) {
  (void)arg;
  int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  if (c < 0) die("accept");
  nodelay(c);
  char *buf = malloc(size);
  if (!buf) die("malloc");
  int r;
  while ((r = read_full(c, buf, size)) > 0) write_full(c, buf, size);
  if (r < 0) die("server read");
  free(buf);
  close(c);
  return NULL;
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static double cpu_us(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + u.ru_utime.tv_usec + u.ru_stime.tv_usec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double p) {
  long i = (long)(p / 100.0 * n);
  return sorted[i < n ? i : n - 1];
}

int main(int argc, char **argv) {
  const char *client = NULL, *server = NULL;
  int port = 0;
  long rounds = 5000, warmup = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--kind")) kind = argv[i + 1];
    else if (!strcmp(argv[i], "--client")) client = argv[i + 1];
    else if (!strcmp(argv[i], "--server")) server = argv[i + 1];
    else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--rounds")) rounds = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--warmup")) warmup = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--size")) size = strtoul(argv[i + 1], NULL, 10);
    else {
      fprintf(stderr, "pingpong: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  if (!client || !server || port <= 0 || port > 65535 || rounds < 1 || warmup < 0 || size < 1 ||
      size > (1 << 20) || (strcmp(kind, "tcp") && strcmp(kind, "smc") && strcmp(kind, "af-smc"))) {
    fprintf(stderr, "usage: pingpong --kind tcp|smc|af-smc --client IP --server IP --port N "
                    "[--rounds N] [--warmup N] [--size BYTES (1..1048576)]\n");
    return 2;
  }

  listener = make_socket();
  struct sockaddr_in sa = addr(server, port), ca = addr(client, 0);
  if (bind(listener, (void *)&sa, sizeof sa) || listen(listener, 1)) die("bind/listen");
  pthread_t t;
  if (pthread_create(&t, NULL, serve, NULL)) die("pthread_create");

  int fd = make_socket();
  if (bind(fd, (void *)&ca, sizeof ca)) die("bind client");
  double t0 = now_us();
  if (connect(fd, (void *)&sa, sizeof sa)) die("connect");
  double connect_us = now_us() - t0;
  nodelay(fd);

  char *buf = malloc(size);
  double *rtt = malloc(sizeof(double) * rounds);
  if (!buf || !rtt) die("malloc");
  memset(buf, 'p', size);
  for (long i = 0; i < warmup; i++) {
    write_full(fd, buf, size);
    if (read_full(fd, buf, size) <= 0) die("warm-up read");
  }
  double cpu0 = cpu_us(), w0 = now_us();
  for (long i = 0; i < rounds; i++) {
    double s = now_us();
    write_full(fd, buf, size);
    if (read_full(fd, buf, size) <= 0) die("read");
    rtt[i] = now_us() - s;
  }
  double wall = now_us() - w0, cpu = cpu_us() - cpu0;
  shutdown(fd, SHUT_WR);
  pthread_join(t, NULL);
  close(fd);
  close(listener);

  double sum = 0;
  for (long i = 0; i < rounds; i++) sum += rtt[i];
  qsort(rtt, rounds, sizeof(double), cmp);
  printf("{\"kind\": \"%s\", \"rounds\": %ld, \"size\": %zu, \"connect_us\": %.1f, "
         "\"mean_us\": %.2f, \"min_us\": %.2f, \"p50_us\": %.2f, \"p75_us\": %.2f, \"p90_us\": %.2f, "
         "\"p99_us\": %.2f, \"p99_9_us\": %.2f, \"max_us\": %.2f, \"round_trips_per_s\": %.1f, "
         "\"cpu_us_per_round_trip\": %.2f}\n",
         kind, rounds, size, connect_us, sum / rounds, rtt[0], pct(rtt, rounds, 50), pct(rtt, rounds, 75),
         pct(rtt, rounds, 90), pct(rtt, rounds, 99), pct(rtt, rounds, 99.9), rtt[rounds - 1],
         rounds / (wall / 1e6), cpu / rounds);
  free(buf);
  free(rtt);
  return 0;
}
