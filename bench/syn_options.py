"""bench/syn_options.py -- counts the SYNs to one port that carry SMC's TCP option (kind 254 with
the SMC magic) and those that do not, on one interface, until a file exists (bench/smc-first.sh,
in the VM; standard library, AF_PACKET, needs root).

  syn_options.py IFACE PORT STOP_FILE

Prints "ready" once capturing, then on stop one line: "SYNs to :PORT: A with the SMC option,
B without". Why it matters: a connection kept on TCP because its path drops SYNs with that
option (the adaptive fallback's hold-down) is only saved by a SYN without it.
"""
import os
import socket
import struct
import sys

ETH_P_IP = 0x0800
SMC_MAGIC = b"\xe2\xd4\xc3\xd9"  # "SMCR" in EBCDIC, after kind 254 and the length


def has_smc_option(options):
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of options
            return False
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return False
        length = options[i + 1]
        if kind == 254 and options[i + 2:i + 6] == SMC_MAGIC:
            return True
        i += length
    return False


def main(iface, port, stop):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.bind((iface, ETH_P_IP))
    s.settimeout(0.2)
    print("ready", flush=True)
    with_opt = without = 0
    while not os.path.exists(stop):
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != socket.IPPROTO_TCP:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:]
        if len(tcp) < 20:
            continue
        dport = struct.unpack("!H", tcp[2:4])[0]
        flags = tcp[13]
        if dport != port or not flags & 0x02 or flags & 0x10:  # SYN without ACK
            continue
        if has_smc_option(tcp[20:(tcp[12] >> 4) * 4]):
            with_opt += 1
        else:
            without += 1
    print("SYNs to :%d: %d with the SMC option, %d without" % (port, with_opt, without))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
