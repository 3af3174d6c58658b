/* bench/abi-connect.c -- drives the C ABI (include/envoy_smc.h) the way the native extension's
 * SmcIoHandle (bazel/source/smc_io_handle.cc) does for an upstream connection: envoy_smc_socket
 * with the remote address, TCP_NODELAY set and told to the library, the connect decision, then
 * connect() and close(). Used by bench/connect-syscalls.sh to count system calls per connect
 * under strace. Not Envoy: no event loop, blocking sockets (so no epoll registration to carry).
 *
 *   abi-connect plain|abi YAML HOST PORT N
 *
 * Built against the ABI of the tree it comes from: -DENVOY_SMC_SPLIT_ABI for the ABI before
 * issue 16 (envoy_smc_decide_connect + envoy_smc_apply_connect + envoy_smc_watch_connect), the
 * one-call envoy_smc_on_connect otherwise. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "envoy_smc.h"

static int one_connect(envoy_smc_runtime *rt, const struct sockaddr_in *dst) {
  const struct sockaddr *sa = (const struct sockaddr *)dst;
  int one = 1;
  if (rt == NULL) { /* the application alone */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
        connect(fd, sa, sizeof *dst) != 0)
      return -1;
    return close(fd);
  }
  envoy_smc_socket_state st;
  int fd = envoy_smc_socket(rt, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0, sa, sizeof *dst, &st);
  if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) return -1;
  envoy_smc_note_sockopt(rt, &st, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  envoy_smc_verdict v;
#ifdef ENVOY_SMC_SPLIT_ABI
  if (envoy_smc_decide_connect(rt, &st, sa, sizeof *dst, &v) != ENVOY_SMC_OK) return -1;
  if (envoy_smc_apply_connect(rt, fd, &st, &v) != ENVOY_SMC_OK) return -1;
  if (v.kind != ENVOY_SMC_KIND_TCP) envoy_smc_watch_connect(rt, fd, sa, sizeof *dst);
#else
  envoy_smc_sockopt opt = {IPPROTO_TCP, TCP_NODELAY, &one, sizeof one};
  envoy_smc_socket_record rec = {&opt, 1, NULL, 0};
  if (envoy_smc_on_connect(rt, fd, &st, &rec, sa, sizeof *dst, NULL, NULL, 0, NULL, &v) !=
      ENVOY_SMC_OK)
    return -1;
#endif
  if (connect(fd, sa, sizeof *dst) != 0) return -1;
  return close(fd);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: abi-connect plain|abi YAML HOST PORT N\n");
    return 2;
  }
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
  if (inet_pton(AF_INET, argv[3], &dst.sin_addr) != 1) return 2;
  envoy_smc_runtime *rt = NULL;
  if (strcmp(argv[1], "abi") == 0) {
    char *err = NULL;
    if (envoy_smc_runtime_new_from_yaml(argv[2], strlen(argv[2]), &rt, &err) != ENVOY_SMC_OK) {
      fprintf(stderr, "abi-connect: %s\n", err ? err : "no runtime");
      return 1;
    }
  }
  /* One connect first: set-up costs (the library's first socket, a link group) stay out of the
   * per-connect difference the bench takes between N and 0. */
  int n = atoi(argv[5]);
  for (int i = 0; i <= n; i++)
    if (one_connect(rt, &dst) != 0) {
      perror("abi-connect");
      return 1;
    }
  if (rt != NULL) {
    size_t count = envoy_smc_stats_snapshot(rt, NULL, 0);
    uint64_t values[128];
    envoy_smc_stats_snapshot(rt, values, count < 128 ? count : 128);
    for (size_t i = 0; i < count && i < 128; i++)
      if (values[i] != 0 && strstr(envoy_smc_counter_name(i), "connect") != NULL)
        fprintf(stderr, "abi-connect: %s %llu\n", envoy_smc_counter_name(i),
                (unsigned long long)values[i]);
  }
  return 0;
}
