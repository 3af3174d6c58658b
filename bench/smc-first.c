/* bench/smc-first.c -- the two ends of bench/smc-first.sh (issue 16, item 4): what a client
 * connection costs the native extension today (a plain TCP socket at socket(), replaced by an SMC
 * socket in connect() when the policy says SMC) against "SMC-first" (an SMC socket at socket(),
 * the kernel's fallback switch in connect() when the policy says TCP). Run in the SMC-R VM.
 *
 *   smc-first serve afsmc|ipproto HOST PORT...
 *       an SMC listener of that flavour on each PORT, one thread each: accept, close.
 *   smc-first connect today|smcfirst|plain afsmc|ipproto YAML HOST PORT N [SERVER_PID]
 *       1 + N connections, each the way Envoy's ClientConnectionImpl drives SmcIoHandle
 *       (bazel/source/smc_io_handle.cc): a non-blocking socket, registered edge-triggered with
 *       epoll for read and write at once, TCP_NODELAY set and told to the library, the connect
 *       decision (envoy_smc_on_connect), connect(), wait for the write event, SO_ERROR, epoll
 *       deregistration, close(). The first connection is set-up (the library's first socket, a
 *       link group) and stays out of the timing. Prints one "result" line: wall time, connections
 *       per second, CPU per connection of this process (getrusage), of SERVER_PID
 *       (/proc/PID/stat) and of the whole VM (/proc/stat: kworkers and softirqs too).
 *       HOLD=FILE: afterwards one more connection is opened and kept, its inode and the
 *       family and protocol its fd answers with printed as "held INODE fd-domain=D
 *       fd-protocol=P", until FILE exists (so the script can read it in smc_diag).
 *
 * Strategies:
 *   today     envoy_smc_socket() (a plain TCP socket), envoy_smc_on_connect() with the shim's
 *             before_replace (drop the epoll registration) and, if replaced, registration again.
 *   smcfirst  not in the library: socket() of the SMC flavour directly, then the same policy
 *             call with a before_replace that refuses (so the library only decides: an SMC
 *             verdict needs nothing more), and for a TCP verdict the fallback switch
 *             (IPPROTO_TCP/TCP_FASTOPEN_CONNECT = 0, what the library's apply_fallback_switch
 *             sets). The library's socket()-time check (user space, no system call) is skipped.
 *   plain     the application alone: a TCP socket, no library.
 * Which outcome a connection gets is the YAML's (the script keeps one port on TCP by
 * upstream.deny_ports). Not Envoy: no libevent, one connection at a time. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "envoy_smc.h"

#define AF_SMC_ 43
#define SMCPROTO_SMC_ 0
#define IPPROTO_SMC_ 256
#define TCP_FASTOPEN_CONNECT_ 30
/* envoy_smc_socket_state.flags bits (capi/src/lib.rs ENVOY_SMC_STATE_*; not in the header) */
#define STATE_NONBLOCK 2
#define STATE_CLOEXEC 4

enum strategy { TODAY, SMC_FIRST, PLAIN };

struct client {
  enum strategy strategy;
  bool af_smc; /* the SMC flavour SMC-first opens: AF_SMC, else IPPROTO_SMC */
  envoy_smc_runtime *rt;
  int ep;
  struct sockaddr_in dst;
  unsigned long smc, tcp, replaced; /* verdicts seen */
};

static void die(const char *what) {
  perror(what);
  exit(1);
}

static int smc_socket(bool af_smc, int flags) {
  return af_smc ? socket(AF_SMC_, SOCK_STREAM | flags, SMCPROTO_SMC_)
                : socket(AF_INET, SOCK_STREAM | flags, IPPROTO_SMC_);
}

/* ---- server ---- */

static void *serve_port(void *arg) {
  int ls = (int)(long)arg;
  for (;;) {
    int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (c >= 0) close(c);
  }
  return NULL;
}

static int serve(bool af_smc, const char *host, char **ports, int n) {
  for (int i = 0; i < n; i++) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(ports[i]))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return 2;
    int one = 1, ls = smc_socket(af_smc, SOCK_CLOEXEC);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1024) != 0)
      die("smc-first serve");
    pthread_t t;
    if (pthread_create(&t, NULL, serve_port, (void *)(long)ls) != 0) die("pthread_create");
  }
  printf("serving\n");
  fflush(stdout);
  for (;;) pause();
}

/* ---- client ---- */

static void epoll_add(struct client *c, int fd) {
  /* Envoy's file event for a client connection: read and write, edge-triggered. */
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
  if (epoll_ctl(c->ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl add");
}

struct replace_ctx {
  struct client *c;
  int fd;
  bool asked; /* the library wanted to replace the socket (an SMC verdict) */
};

/* today: the shim's before_replace, which drops the file event while the old socket exists. */
static bool drop_registration(void *arg) {
  struct replace_ctx *r = arg;
  r->asked = true;
  return epoll_ctl(r->c->ep, EPOLL_CTL_DEL, r->fd, NULL) == 0;
}

/* smcfirst: the socket is SMC already; an SMC verdict needs nothing, so nothing is replaced. */
static bool refuse_replace(void *arg) {
  ((struct replace_ctx *)arg)->asked = true;
  return false;
}

static int open_and_decide(struct client *c) {
  const struct sockaddr *sa = (const struct sockaddr *)&c->dst;
  const int flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
  int one = 1, fd;
  envoy_smc_socket_state st;
  memset(&st, 0, sizeof st);
  switch (c->strategy) {
  case PLAIN:
    fd = socket(AF_INET, SOCK_STREAM | flags, 0);
    break;
  case TODAY:
    fd = envoy_smc_socket(c->rt, AF_INET, SOCK_STREAM | flags, 0, sa, sizeof c->dst, &st);
    break;
  default:
    fd = smc_socket(c->af_smc, flags);
    st.flags = STATE_NONBLOCK | STATE_CLOEXEC;
    st.tracked = 1;
    break;
  }
  if (fd < 0) die("socket");
  epoll_add(c, fd);
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
  if (c->strategy == PLAIN) return fd;
  envoy_smc_note_sockopt(c->rt, &st, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  envoy_smc_sockopt opt = {IPPROTO_TCP, TCP_NODELAY, &one, sizeof one};
  envoy_smc_socket_record rec = {&opt, 1, NULL, 0};
  struct replace_ctx ctx = {c, fd, false};
  envoy_smc_verdict v;
  if (envoy_smc_on_connect(c->rt, fd, &st, &rec, sa, sizeof c->dst,
                           c->strategy == TODAY ? drop_registration : refuse_replace, &ctx, 0,
                           NULL, &v) != ENVOY_SMC_OK)
    die("envoy_smc_on_connect");
  if (c->strategy == TODAY) {
    if (v.replaced) {
      c->replaced++;
      epoll_add(c, fd);
    } else if (ctx.asked) {
      epoll_add(c, fd); /* a failed replacement: the registration comes back as it was */
    }
    if (v.kind == ENVOY_SMC_KIND_TCP) c->tcp++;
    else c->smc++;
    return fd;
  }
  if (ctx.asked) {
    c->smc++;
  } else {
    int zero = 0;
    c->tcp++;
    if (setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT_, &zero, sizeof zero) != 0)
      die("fallback switch");
  }
  return fd;
}

/* One connection up to established (not closed). */
static int connect_one(struct client *c) {
  int fd = open_and_decide(c);
  if (connect(fd, (struct sockaddr *)&c->dst, sizeof c->dst) != 0) {
    if (errno != EINPROGRESS) die("connect");
    struct epoll_event ev;
    for (;;) {
      int n = epoll_wait(c->ep, &ev, 1, 30000);
      if (n < 0 && errno == EINTR) continue;
      if (n != 1) die("epoll_wait: no write event in 30 s");
      if (ev.data.fd == fd && (ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) break;
    }
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    errno = err;
    die("connect (SO_ERROR)");
  }
  return fd;
}

static void close_one(struct client *c, int fd) {
  /* libevent deletes the event before Envoy closes the fd. */
  if (epoll_ctl(c->ep, EPOLL_CTL_DEL, fd, NULL) != 0) die("epoll_ctl del");
  close(fd);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static double self_cpu(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}

/* utime + stime of PID (all its threads), in seconds; 0 without one. */
static double proc_cpu(const char *pid) {
  if (pid == NULL) return 0;
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long long ut = 0, st = 0;
  if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                          &st) != 2)
    return 0;
  return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

/* Busy time of the whole machine (every CPU, everything but idle and iowait), in seconds. */
static double machine_cpu(void) {
  FILE *f = fopen("/proc/stat", "r");
  unsigned long long v[10] = {0};
  if (f == NULL) return 0;
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                 &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
  fclose(f);
  if (n < 8) return 0;
  /* user nice system idle iowait irq softirq steal (guest time is inside user already) */
  return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / sysconf(_SC_CLK_TCK);
}

static int client(int argc, char **argv) {
  static const char *names[] = {"today", "smcfirst", "plain"};
  struct client c = {0};
  if (strcmp(argv[2], "today") == 0) c.strategy = TODAY;
  else if (strcmp(argv[2], "smcfirst") == 0) c.strategy = SMC_FIRST;
  else if (strcmp(argv[2], "plain") == 0) c.strategy = PLAIN;
  else return 2;
  c.af_smc = strcmp(argv[3], "afsmc") == 0;
  c.dst.sin_family = AF_INET;
  c.dst.sin_port = htons(atoi(argv[6]));
  if (inet_pton(AF_INET, argv[5], &c.dst.sin_addr) != 1) return 2;
  const int n = atoi(argv[7]);
  const char *server = argc > 8 ? argv[8] : NULL;
  if (c.strategy != PLAIN) {
    char *err = NULL;
    if (envoy_smc_runtime_new_from_yaml(argv[4], strlen(argv[4]), &c.rt, &err) != ENVOY_SMC_OK) {
      fprintf(stderr, "smc-first: %s\n", err ? err : "no runtime");
      return 1;
    }
  }
  c.ep = epoll_create1(EPOLL_CLOEXEC);
  if (c.ep < 0) die("epoll_create1");
  close_one(&c, connect_one(&c)); /* set-up, not timed */
  c.smc = c.tcp = c.replaced = 0;
  const double t0 = now(), u0 = self_cpu(), s0 = proc_cpu(server), m0 = machine_cpu();
  for (int i = 0; i < n; i++) close_one(&c, connect_one(&c));
  const double t = now() - t0, u = self_cpu() - u0, s = proc_cpu(server) - s0,
               m = machine_cpu() - m0;
  if (n > 0)
    printf("result strategy=%s port=%s n=%d secs=%.4f rate=%.1f client_us=%.1f server_us=%.1f "
           "vm_us=%.1f smc=%lu tcp=%lu replaced=%lu\n",
           names[c.strategy], argv[6], n, t, n / t, u / n * 1e6, s / n * 1e6, m / n * 1e6, c.smc,
           c.tcp, c.replaced);
  const char *hold = getenv("HOLD");
  if (hold != NULL) {
    int fd = connect_one(&c);
    struct stat sb;
    int domain = 0, proto = 0;
    socklen_t dl = sizeof domain, pl = sizeof proto;
    if (fstat(fd, &sb) != 0 || getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &pl) != 0)
      die("held socket");
    /* What the fd answers as: after the fallback switch the kernel hands it to the internal TCP
     * socket (AF_INET, IPPROTO_TCP) although smc_diag still lists the SMC socket. */
    printf("held %llu fd-domain=%d fd-protocol=%d\n", (unsigned long long)sb.st_ino, domain,
           proto);
    fflush(stdout);
    for (int i = 0; i < 1200 && access(hold, F_OK) != 0; i++) usleep(50000);
    close_one(&c, fd);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && strcmp(argv[1], "serve") == 0)
    return serve(strcmp(argv[2], "afsmc") == 0, argv[3], argv + 4, argc - 4);
  if ((argc == 8 || argc == 9) && strcmp(argv[1], "connect") == 0) return client(argc, argv);
  fprintf(stderr, "usage: smc-first serve afsmc|ipproto HOST PORT...\n"
                  "       smc-first connect today|smcfirst|plain afsmc|ipproto YAML HOST PORT N "
                  "[SERVER_PID]\n");
  return 2;
}
