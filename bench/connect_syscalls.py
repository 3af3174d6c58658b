"""bench/connect_syscalls.py -- the two ends of bench/connect-syscalls.sh, run in the SMC-R VM.

  connect_syscalls.py serve HOST PORT...   accept and close on each PORT (an IPPROTO_SMC listener:
                                           SMC-R for SMC clients, fallback for TCP ones)
  connect_syscalls.py connect HOST PORT N  1 + N times: socket(), TCP_NODELAY on, connect(), close()
"""
import socket
import sys
import threading

IPPROTO_SMC = 256


def serve(host, ports):
    def loop(port):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SMC)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(512)
        while True:
            c, _ = ls.accept()
            c.close()

    for p in ports:
        threading.Thread(target=loop, args=(p,), daemon=True).start()
    print("serving", flush=True)
    threading.Event().wait()


def connect(host, port, n):
    # One connect first: the library's set-up and the first link group stay out of the
    # per-connect difference the bench takes between N and 0.
    for _ in range(n + 1):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((host, port))
        s.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    else:
        connect(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
