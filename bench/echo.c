/* bench/echo.c -- the benchmark's app: a small HTTP/1.1 echo server (one thread, epoll).
 *
 *   echo ADDR PORT
 *
 * Answers every request with 200 and the request body (Content-Length bodies; keep-alive;
 * pipelining; "connection: close" honoured). Prints "READY" once listening, exits when stdin
 * closes (so it never outlives the script that started it) or on SIGTERM. Built by
 * bench/run.sh with `cc -O2`; it must not be the bottleneck of a proxy benchmark, which a
 * Python server under TCG emulation would be.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 256

struct conn {
  int fd;
  char *in;
  size_t in_len, in_cap;
  char *out;
  size_t out_len, out_off, out_cap;
  int close_after;
};

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) {
    perror("realloc");
    exit(1);
  }
  return q;
}

static void conn_free(int ep, struct conn *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->in);
  free(c->out);
  free(c);
}

static void out_append(struct conn *c, const char *p, size_t n) {
  if (c->out_len + n > c->out_cap) {
    c->out_cap = (c->out_len + n) * 2;
    c->out = xrealloc(c->out, c->out_cap);
  }
  memcpy(c->out + c->out_len, p, n);
  c->out_len += n;
}

/* Case-insensitive search of a header's value in the header block [h, end). */
static const char *header(const char *h, const char *end, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  const char *line = h;
  while (line < end) {
    const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
    if (!eol) eol = end;
    if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
      const char *v = line + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      *vlen = (size_t)(eol - v);
      return v;
    }
    line = eol + 2;
  }
  return NULL;
}

/* Parses and answers every complete request in the input buffer. -1: protocol error. */
static int handle(struct conn *c) {
  size_t off = 0;
  while (!c->close_after) {
    char *start = c->in + off;
    size_t avail = c->in_len - off;
    char *hend = memmem(start, avail, "\r\n\r\n", 4);
    if (!hend) {
      if (avail > 65536) return -1;
      break;
    }
    const char *first_eol = memmem(start, (size_t)(hend - start) + 2, "\r\n", 2);
    const char *hdrs = first_eol + 2;
    size_t vlen = 0, body_len = 0;
    const char *v = header(hdrs, hend + 2, "content-length", &vlen);
    if (v) body_len = strtoul(v, NULL, 10);
    if (header(hdrs, hend + 2, "transfer-encoding", &vlen)) {
      static const char r[] = "HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
      out_append(c, r, sizeof r - 1);
      c->close_after = 1;
      break;
    }
    size_t head_len = (size_t)(hend + 4 - start);
    if (avail < head_len + body_len) break;
    v = header(hdrs, hend + 2, "connection", &vlen);
    int close_req = v && vlen == 5 && strncasecmp(v, "close", 5) == 0;
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                     "content-length: %zu\r\n%s\r\n",
                     body_len, close_req ? "connection: close\r\n" : "");
    out_append(c, resp, (size_t)n);
    out_append(c, start + head_len, body_len);
    off += head_len + body_len;
    if (close_req) c->close_after = 1;
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  return 0;
}

/* Writes what is buffered. 1: all written; 0: would block; -1: error. */
static int flush_out(struct conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      return -1;
    }
    c->out_off += (size_t)w;
  }
  c->out_off = c->out_len = 0;
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: echo ADDR PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
    fprintf(stderr, "echo: bad address %s\n", argv[1]);
    return 2;
  }
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0) {
    perror("echo: bind/listen");
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  /* stdin: EOF or error ends the server */
  static int stdin_marker;
  struct epoll_event sev = {.events = EPOLLIN | EPOLLHUP, .data.ptr = &stdin_marker};
  int watch_stdin = epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) == 0;
  printf("READY\n");
  fflush(stdout);
  (void)watch_stdin;

  struct epoll_event evs[MAX_EVENTS];
  char buf[65536];
  for (;;) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      void *p = evs[i].data.ptr;
      if (p == &stdin_marker) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r <= 0) return 0;
        continue;
      }
      if (p == NULL) {
        for (;;) {
          int fd = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct conn *c = calloc(1, sizeof *c);
          c->fd = fd;
          struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      struct conn *c = p;
      int dead = 0;
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        for (;;) {
          ssize_t r = recv(c->fd, buf, sizeof buf, 0);
          if (r > 0) {
            if (c->in_len + (size_t)r > c->in_cap) {
              c->in_cap = (c->in_len + (size_t)r) * 2;
              c->in = xrealloc(c->in, c->in_cap);
            }
            memcpy(c->in + c->in_len, buf, (size_t)r);
            c->in_len += (size_t)r;
            if ((size_t)r < sizeof buf) break;
            continue;
          }
          if (r < 0 && errno == EINTR) continue;
          if (r < 0 && errno == EAGAIN) break;
          dead = 1; /* EOF or error */
          break;
        }
        if (handle(c) < 0) dead = 1;
      }
      if (!dead && c->out_len) {
        int f = flush_out(c);
        if (f < 0) {
          dead = 1;
        } else {
          struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | (f == 0 ? EPOLLOUT : 0), .data.ptr = c};
          epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
          if (f == 1 && c->close_after) dead = 1;
        }
      } else if (!dead && c->close_after && c->out_len == 0) {
        dead = 1;
      }
      if (dead) conn_free(ep, c);
    }
  }
}
