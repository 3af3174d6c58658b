/* Drives every function of include/envoy_smc.h from C, error paths included.
 * Built and run by capi/tests/c_abi.rs with the system C compiler, -Wall -Wextra -Werror and
 * ASan/UBSan, linked against the Rust staticlib. On a kernel without SMC (this CI host) every
 * socket is TCP with reason kernel_lacks_smc; data still flows. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "envoy_smc.h"

static int failures;
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);          \
      failures++;                                                              \
    }                                                                          \
  } while (0)

static const char *GOOD = "mode: MODE_AUTO\nmesh_switch: {always_on: true}\n"
                          "opt_in: {all_workloads: true}\nlisteners: {ports: [15006]}\n";

static envoy_smc_runtime *new_runtime(const char *yaml) {
  envoy_smc_runtime *rt = NULL;
  char *err = NULL;
  envoy_smc_result r = envoy_smc_runtime_new_from_yaml(yaml, strlen(yaml), &rt, &err);
  CHECK(r == ENVOY_SMC_OK);
  CHECK(err == NULL);
  return rt;
}

static void test_version(void) {
  CHECK(envoy_smc_abi_version() == ENVOY_SMC_ABI_VERSION);
  CHECK(envoy_smc_version() != NULL && strlen(envoy_smc_version()) >= 5);
}

static void test_runtime_errors(void) {
  envoy_smc_runtime *rt = NULL;
  char *err = NULL;
  const char *bad = "upstream: {allow: [10.0.0.0/8, 10.0.0.0/33]}";
  CHECK(envoy_smc_runtime_new_from_yaml(bad, strlen(bad), &rt, &err) == ENVOY_SMC_INVALID_CONFIG);
  CHECK(rt == NULL);
  CHECK(err != NULL && strstr(err, "upstream.allow[1]") && strstr(err, "10.0.0.0/33"));
  envoy_smc_string_free(err);
  /* Without an error out-pointer the code alone tells. */
  CHECK(envoy_smc_runtime_new_from_yaml(bad, strlen(bad), &rt, NULL) == ENVOY_SMC_INVALID_CONFIG);
  CHECK(envoy_smc_runtime_new_from_yaml(NULL, 0, &rt, &err) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_runtime_new_from_yaml(GOOD, strlen(GOOD), NULL, &err) == ENVOY_SMC_NULL_ARGUMENT);
  const char latin1[] = {'m', 'o', 'd', 'e', ':', ' ', (char)0xff, 0};
  err = NULL;
  CHECK(envoy_smc_runtime_new_from_yaml(latin1, strlen(latin1), &rt, &err) == ENVOY_SMC_INVALID_CONFIG);
  CHECK(err != NULL && strstr(err, "UTF-8"));
  envoy_smc_string_free(err);

  /* The binary form: garbage, and an empty message with annotations. */
  const uint8_t garbage[] = {0xff, 0xff, 0xff};
  err = NULL;
  CHECK(envoy_smc_runtime_new_from_proto(garbage, sizeof garbage, NULL, 0, &rt, &err) == ENVOY_SMC_INVALID_CONFIG);
  CHECK(err != NULL && strstr(err, "SmcConfig"));
  envoy_smc_string_free(err);
  envoy_smc_annotation ann = {"smc.asm.alibabacloud.com/enabled", 32, "true", 4};
  rt = NULL;
  CHECK(envoy_smc_runtime_new_from_proto(NULL, 0, &ann, 1, &rt, NULL) == ENVOY_SMC_OK);
  CHECK(rt != NULL);
  envoy_smc_runtime_free(rt);
  envoy_smc_annotation null_key = {NULL, 3, "x", 1};
  CHECK(envoy_smc_runtime_new_from_proto(NULL, 0, &null_key, 1, &rt, NULL) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_runtime_new_from_proto(NULL, 0, NULL, 2, &rt, NULL) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_runtime_new_from_proto(garbage, 3, NULL, 0, NULL, NULL) == ENVOY_SMC_NULL_ARGUMENT);
  envoy_smc_runtime_free(NULL);
  envoy_smc_string_free(NULL);
}

static uint64_t counter(envoy_smc_runtime *rt, const char *name) {
  uint64_t values[64];
  size_t n = envoy_smc_stats_snapshot(rt, values, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (strcmp(envoy_smc_counter_name(i), name) == 0) return values[i];
  fprintf(stderr, "no counter %s\n", name);
  failures++;
  return 0;
}

static void test_names_and_stats(envoy_smc_runtime *rt) {
  size_t n = envoy_smc_stats_snapshot(rt, NULL, 0);
  CHECK(n >= 20);
  for (size_t i = 0; i < n; i++) CHECK(envoy_smc_counter_name(i) != NULL);
  CHECK(envoy_smc_counter_name(n) == NULL);
  CHECK(envoy_smc_counter_name((size_t)-1) == NULL);
  CHECK(strcmp(envoy_smc_reason_name(3), "kernel_lacks_smc") == 0);
  CHECK(strcmp(envoy_smc_reason_name(6), "loopback") == 0);
  CHECK(envoy_smc_reason_name(0) == NULL);
  CHECK(envoy_smc_reason_name(9999) == NULL);
  CHECK(strcmp(envoy_smc_result_name(ENVOY_SMC_OK), "ok") == 0);
  CHECK(strcmp(envoy_smc_result_name(ENVOY_SMC_INVALID_ARGUMENT), "invalid_argument") == 0);
  CHECK(strcmp(envoy_smc_result_name(5), "unknown_result") == 0);
  CHECK(strcmp(envoy_smc_result_name(UINT32_MAX), "unknown_result") == 0);
  CHECK(envoy_smc_stats_snapshot(NULL, NULL, 0) == 0);
  uint64_t two[2] = {77, 77};
  CHECK(envoy_smc_stats_snapshot(rt, two, 1) == n);
  CHECK(two[1] == 77); /* never writes past len */
}

/* A listener and a client through the ABI; one request/response over them. */
static void test_round_trip(envoy_smc_runtime *rt) {
  uint64_t lacks_before = counter(rt, "tcp.kernel_lacks_smc");
  struct sockaddr_in any = {0};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  envoy_smc_socket_state ls = {0};
  int lfd = envoy_smc_socket(rt, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0, NULL, 0, &ls);
  CHECK(lfd >= 0);
  int one = 1;
  envoy_smc_note_sockopt(rt, &ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  CHECK(setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
  CHECK(bind(lfd, (struct sockaddr *)&any, sizeof any) == 0);
  envoy_smc_verdict v;
  memset(&v, 0xaa, sizeof v);
  envoy_smc_sockopt reuse = {SOL_SOCKET, SO_REUSEADDR, &one, sizeof one};
  envoy_smc_socket_record lrec = {&reuse, 1, (struct sockaddr *)&any, sizeof any};
  CHECK(envoy_smc_on_listen(rt, lfd, &ls, &lrec, &v) == ENVOY_SMC_OK);
  CHECK(v.kind == ENVOY_SMC_KIND_TCP);
  CHECK(!v.replaced);
  CHECK(listen(lfd, 8) == 0);
  socklen_t alen = sizeof any;
  CHECK(getsockname(lfd, (struct sockaddr *)&any, &alen) == 0);

  envoy_smc_socket_state cs = {0};
  int cfd = envoy_smc_socket(rt, AF_INET, SOCK_STREAM, 0, (struct sockaddr *)&any, sizeof any, &cs);
  CHECK(cfd >= 0);
  CHECK(!cs.tracked); /* loopback destination, or a kernel without SMC: TCP for good */
  CHECK(cs.reason == ENVOY_SMC_TCP_REASON_LOOPBACK || cs.reason == ENVOY_SMC_TCP_REASON_KERNEL_LACKS_SMC);
  memset(&v, 0xaa, sizeof v);
  uint64_t cookie = 77;
  CHECK(envoy_smc_on_connect(rt, cfd, &cs, NULL, (struct sockaddr *)&any, sizeof any, NULL, NULL, 1, &cookie, &v) == ENVOY_SMC_OK);
  CHECK(cookie == 0); /* an untracked state: nothing watched */
  CHECK(v.kind == ENVOY_SMC_KIND_TCP);
  /* An untracked state decides TCP for the state's own reason, not "not an IP stream". */
  CHECK(v.reason == cs.reason);
  CHECK(connect(cfd, (struct sockaddr *)&any, sizeof any) == 0);
  int afd = accept(lfd, NULL, NULL);
  CHECK(afd >= 0);
  CHECK(write(cfd, "ping", 4) == 4);
  char buf[8] = {0};
  CHECK(read(afd, buf, sizeof buf) == 4 && memcmp(buf, "ping", 4) == 0);
  CHECK(write(afd, "pong", 4) == 4);
  CHECK(read(cfd, buf, sizeof buf) == 4 && memcmp(buf, "pong", 4) == 0);
  close(afd);
  close(cfd);
  close(lfd);
  /* Both IP stream sockets were counted with their reason on a kernel without SMC. */
  if (!ls.tracked) CHECK(counter(rt, "tcp.kernel_lacks_smc") == lacks_before + 2);
}

static void test_argument_errors(envoy_smc_runtime *rt) {
  envoy_smc_verdict v;
  envoy_smc_socket_state tracked = {.facts = 0, .tracked = true, .reason = 0};
  envoy_smc_socket_state untracked = {.facts = 0, .tracked = false, .reason = 0};
  struct sockaddr_in dst = {0};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(80);
  dst.sin_addr.s_addr = htonl(0x0a000001);
  struct sockaddr_un un = {0};
  un.sun_family = AF_UNIX;

  /* Non-IP and datagram sockets are plain and untracked. */
  envoy_smc_socket_state s = {.facts = 123, .tracked = true, .reason = 0};
  int ufd = envoy_smc_socket(rt, AF_UNIX, SOCK_STREAM, 0, NULL, 0, &s);
  CHECK(ufd >= 0 && !s.tracked && s.facts == 0 && s.reason == ENVOY_SMC_TCP_REASON_NOT_IP_STREAM);
  close(ufd);
  int dfd = envoy_smc_socket(rt, AF_INET, SOCK_DGRAM, 0, NULL, 0, &s);
  CHECK(dfd >= 0 && !s.tracked);
  close(dfd);
  /* socket(2)'s own errors come back as socket(2) gives them. */
  errno = 0;
  CHECK(envoy_smc_socket(rt, 12345, SOCK_STREAM, 0, NULL, 0, &s) == -1 && errno == EAFNOSUPPORT);
  /* A NULL runtime or state: a plain socket. */
  int pfd = envoy_smc_socket(NULL, AF_INET, SOCK_STREAM, 0, NULL, 0, NULL);
  CHECK(pfd >= 0);

  envoy_smc_note_sockopt(NULL, &tracked, 1, 18, NULL, 0);
  envoy_smc_note_sockopt(rt, NULL, 1, 18, NULL, 0);
  envoy_smc_note_sockopt(rt, &tracked, 1, 18, NULL, 4);
  int val = 1;
  envoy_smc_note_sockopt(rt, &untracked, 1, 18, &val, sizeof val);
  CHECK(untracked.facts == 0);

  CHECK(envoy_smc_on_listen(NULL, pfd, &tracked, NULL, &v) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_on_listen(rt, pfd, NULL, NULL, &v) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_on_listen(rt, pfd, &tracked, NULL, NULL) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_on_listen(rt, -1, &tracked, NULL, &v) == ENVOY_SMC_INVALID_ARGUMENT);
  CHECK(envoy_smc_on_listen(rt, pfd, &untracked, NULL, &v) == ENVOY_SMC_OK && v.kind == ENVOY_SMC_KIND_TCP);
  CHECK(envoy_smc_on_dup(rt, -1, &tracked, NULL, &v) == ENVOY_SMC_INVALID_ARGUMENT);
  /* A bound address that is not IP: a bad record. */
  envoy_smc_socket_record bad_bound = {NULL, 0, (struct sockaddr *)&un, sizeof un};
  CHECK(envoy_smc_on_listen(rt, pfd, &tracked, &bad_bound, &v) == ENVOY_SMC_INVALID_ARGUMENT);
  /* The fields C writes are plain integers: any non-zero value means "tracked", defined
     behaviour for every value. */
  envoy_smc_socket_state two = {.facts = 0, .tracked = 2, .reason = 0};
  CHECK(envoy_smc_on_listen(rt, -1, &two, NULL, &v) == ENVOY_SMC_INVALID_ARGUMENT);
  envoy_smc_socket_state lacks = {.facts = 0, .tracked = 0, .reason = ENVOY_SMC_TCP_REASON_KERNEL_LACKS_SMC};
  CHECK(envoy_smc_on_connect(rt, pfd, &lacks, NULL, (struct sockaddr *)&dst, sizeof dst, NULL, NULL, 0, NULL, &v) == ENVOY_SMC_OK);
  CHECK(v.kind == ENVOY_SMC_KIND_TCP && v.reason == ENVOY_SMC_TCP_REASON_KERNEL_LACKS_SMC);
  CHECK(envoy_smc_on_connect(rt, pfd, &tracked, NULL, NULL, 0, NULL, NULL, 0, NULL, &v) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_on_connect(rt, pfd, &tracked, NULL, (struct sockaddr *)&un, sizeof un, NULL, NULL, 0, NULL, &v) == ENVOY_SMC_INVALID_ARGUMENT);
  CHECK(envoy_smc_on_connect(rt, pfd, &tracked, NULL, (struct sockaddr *)&dst, 4, NULL, NULL, 0, NULL, &v) == ENVOY_SMC_INVALID_ARGUMENT);
  /* An unbound socket duplicated before a decision stays TCP, undecided (reason 0). */
  CHECK(envoy_smc_on_dup(rt, pfd, &tracked, NULL, &v) == ENVOY_SMC_OK);
  CHECK(v.kind == ENVOY_SMC_KIND_TCP && v.reason == 0 && !v.replaced);
  /* This host has no SMC: the kernel is the reason (in the SMC VM the verdict is SMC). A TCP
     verdict leaves the socket as it is. */
  CHECK(envoy_smc_on_connect(rt, pfd, &tracked, NULL, (struct sockaddr *)&dst, sizeof dst, NULL, NULL, 0, NULL, &v) == ENVOY_SMC_OK);
  CHECK(v.kind != ENVOY_SMC_KIND_TCP || (v.reason == 3 && !v.replaced));
  /* Watching a connect (adaptive fallback): NULLs and bad fds are no-ops; a real socket is counted. */
  uint64_t watched = counter(rt, "adaptive.connects_watched");
  envoy_smc_watch_connect(NULL, pfd, (struct sockaddr *)&dst, sizeof dst);
  envoy_smc_watch_connect(rt, pfd, NULL, 0);
  envoy_smc_watch_connect(rt, -1, (struct sockaddr *)&dst, sizeof dst);
  envoy_smc_watch_connect(rt, pfd, (struct sockaddr *)&un, sizeof un);
  CHECK(counter(rt, "adaptive.connects_watched") == watched);
  envoy_smc_watch_connect(rt, pfd, (struct sockaddr *)&dst, sizeof dst);
  CHECK(counter(rt, "adaptive.connects_watched") == watched + 1);
  close(pfd);
}

/* What the rescuer was told, from the watchdog thread. */
static _Atomic uint64_t told_token;
static _Atomic int told_rescue = -1;

static void on_rescue(void *ctx, uint64_t token, bool rescue) {
  CHECK(ctx == (void *)&told_token);
  atomic_store(&told_token, token);
  atomic_store(&told_rescue, rescue ? 1 : 0);
}

static int listener_on_loopback(int backlog, struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(fd, backlog) == 0);
  CHECK(getsockname(fd, (struct sockaddr *)addr, &len) == 0);
  return fd;
}

/* Adaptive fallback's rescue through the C ABI, the way the Envoy extension drives it. A listener
 * with a full accept queue drops SYNs, standing in for the middlebox (the real one is an iptables
 * rule in the SMC-R VM): the connect to it stalls; it is watched as if it went to `good`, whose
 * plain TCP works, so the watchdog trips and tells the rescuer; this thread then moves the connect
 * with envoy_smc_rescue_connect and the new socket connects to `good`. */
static void test_rescue(void) {
  envoy_smc_runtime *rt = new_runtime("adaptive_fallback: {detect_after_ms: 300, probe_timeout_ms: 1000}\n");
  if (!rt) return;
  CHECK(envoy_smc_runtime_set_rescuer(NULL, on_rescue, NULL) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_runtime_set_rescuer(rt, NULL, NULL) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_runtime_set_rescuer(rt, on_rescue, &told_token) == ENVOY_SMC_OK);
  struct sockaddr_in full_addr, good_addr;
  int full = listener_on_loopback(0, &full_addr);
  int good = listener_on_loopback(8, &good_addr);
  int filler = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(connect(filler, (struct sockaddr *)&full_addr, sizeof full_addr) == 0);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  CHECK(connect(fd, (struct sockaddr *)&full_addr, sizeof full_addr) == -1 && errno == EINPROGRESS);

  uint64_t cookie = 0;
  CHECK(!envoy_smc_watch_connect_rescuable(NULL, fd, (struct sockaddr *)&good_addr, sizeof good_addr, 1, &cookie));
  CHECK(!envoy_smc_watch_connect_rescuable(rt, fd, NULL, 0, 1, &cookie));
  CHECK(!envoy_smc_watch_connect_rescuable(rt, -1, (struct sockaddr *)&good_addr, sizeof good_addr, 1, &cookie));
  CHECK(cookie == 0); /* untouched when not watched */
  CHECK(envoy_smc_watch_connect_rescuable(rt, fd, (struct sockaddr *)&good_addr, sizeof good_addr, 4242, &cookie));
  CHECK(cookie != 0);

  for (int i = 0; i < 100 && atomic_load(&told_rescue) < 0; i++) usleep(50 * 1000);
  CHECK(atomic_load(&told_rescue) == 1);
  CHECK(atomic_load(&told_token) == 4242);

  CHECK(envoy_smc_rescue_connect(NULL, fd, cookie, (struct sockaddr *)&good_addr, sizeof good_addr, NULL, 0) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_rescue_connect(rt, fd, cookie, NULL, 0, NULL, 0) == ENVOY_SMC_NULL_ARGUMENT);
  CHECK(envoy_smc_rescue_connect(rt, fd, cookie + 1, (struct sockaddr *)&good_addr, sizeof good_addr, NULL, 0) == ENVOY_SMC_INVALID_ARGUMENT);
  CHECK(envoy_smc_rescue_connect(rt, fd, cookie, (struct sockaddr *)&good_addr, sizeof good_addr, NULL, 0) == ENVOY_SMC_OK);
  CHECK(counter(rt, "adaptive.rescued") == 1);
  CHECK(counter(rt, "adaptive.rescue_failed") == 1); /* the wrong cookie */
  CHECK((fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);

  /* The same fd now connects to `good`: writable, no error, and the data arrives there. */
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
  CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
  CHECK(epoll_wait(ep, &ev, 1, 3000) == 1);
  int err = -1;
  socklen_t len = sizeof err;
  CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0);
  CHECK(write(fd, "rescued", 7) == 7);
  /* The watchdog's plain TCP probe came first; the rescued connection carries the data. */
  char buf[8] = {0};
  int got = 0;
  for (int i = 0; i < 2 && !got; i++) {
    int a = accept(good, NULL, NULL);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 300 * 1000};
    setsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    got = read(a, buf, 7) == 7 && memcmp(buf, "rescued", 7) == 0;
    close(a);
  }
  CHECK(got);
  /* A second rescue of the connected socket: no longer connecting, nothing changes. */
  CHECK(envoy_smc_rescue_connect(rt, fd, cookie, (struct sockaddr *)&good_addr, sizeof good_addr, NULL, 0) == ENVOY_SMC_INVALID_ARGUMENT);
  close(ep);
  close(fd);
  close(filler);
  close(full);
  close(good);
  envoy_smc_runtime_free(rt);
}

int main(void) {
  test_version();
  test_runtime_errors();
  envoy_smc_runtime *rt = new_runtime(GOOD);
  if (!rt) return 1;
  test_names_and_stats(rt);
  test_round_trip(rt);
  test_argument_errors(rt);
  envoy_smc_runtime_free(rt);
  test_rescue();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("abi_test: all checks passed\n");
  return 0;
}
