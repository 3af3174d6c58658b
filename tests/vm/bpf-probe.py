#!/usr/bin/env python3
"""tests/vm/bpf-probe.py -- inside the test VM: can a BPF program decide SMC at socket() on this
kernel? What a BPF node agent (no preload, no custom proxy image) needs, tried for real:

  1. /sys/kernel/btf/vmlinux exists and names update_socket_protocol (a FUNC) and the
     smc_hs_ctrl struct (the per-netns handshake hook's struct_ops, Linux >= 6.19);
  2. the net.smc.hs_ctrl sysctl exists;
  3. an fmod_ret program on update_socket_protocol loads, attaches, and makes this process's
     socket(AF_INET, SOCK_STREAM, 0) an IPPROTO_SMC socket (SO_PROTOCOL 256); after detaching,
     the same call is plain TCP again.

The program is eight instructions of raw bytecode, loaded with the bpf() syscall (no libbpf,
no compiler): if the calling process is this one and the family is AF_INET, return IPPROTO_SMC,
else 0 (0: the kernel's own update_socket_protocol runs). Prints one line per finding; exit 0
when everything worked, 1 otherwise.
"""
import ctypes
import os
import socket
import struct
import sys

BTF_PATH = "/sys/kernel/btf/vmlinux"
SYS_BPF = 321  # x86-64
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_MODIFY_RETURN = 26
BTF_KIND_FUNC = 12
BTF_KIND_STRUCT = 4
IPPROTO_SMC = 256
SO_PROTOCOL = 38

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ok = True


def say(good, what):
    global ok
    ok = ok and good
    print(("ok    " if good else "FAIL  ") + what, flush=True)


def btf_ids(path, wanted):
    """{(kind, name): type id} for the wanted (kind, name) pairs, from a raw BTF blob."""
    data = open(path, "rb").read()
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise ValueError("not BTF (magic %#x)" % magic)
    types, strs = hdr_len + type_off, hdr_len + str_off
    # bytes of kind-specific data after the 12-byte header, by kind: fixed, per member
    extra = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
             15: (0, 12), 17: (4, 0), 19: (0, 12)}
    found, off, tid = {}, types, 1
    while off < types + type_len:
        name_off, info, _ = struct.unpack_from("<III", data, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind in (BTF_KIND_FUNC, BTF_KIND_STRUCT):
            end = data.index(b"\0", strs + name_off)
            key = (kind, data[strs + name_off:end].decode())
            if key in wanted:
                found[key] = tid
        fixed, per = extra.get(kind, (0, 0))
        off += 12 + fixed + per * vlen
        tid += 1
    return found


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, len(attr))
    r = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def fmod_ret_program(tgid):
    return b"".join([
        insn(0xBF, dst=6, src=1),                  # r6 = r1 (ctx: u64 args[])
        insn(0x85, imm=14),                        # call bpf_get_current_pid_tgid
        insn(0x77, dst=0, imm=32),                 # r0 >>= 32 (tgid)
        insn(0x55, dst=0, off=4, imm=tgid),        # if r0 != tgid goto out
        insn(0x79, dst=1, src=6, off=0),           # r1 = args[0] (family)
        insn(0x55, dst=1, off=2, imm=socket.AF_INET),  # if r1 != AF_INET goto out
        insn(0xB7, dst=0, imm=IPPROTO_SMC),        # r0 = IPPROTO_SMC
        insn(0x95),                                # exit
        insn(0xB7, dst=0, imm=0),                  # out: r0 = 0 (the kernel's own choice)
        insn(0x95),                                # exit
    ])


def protocol_of_new_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    try:
        return s.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL)
    finally:
        s.close()


def main():
    if not os.path.exists(BTF_PATH):
        say(False, "%s missing (CONFIG_DEBUG_INFO_BTF)" % BTF_PATH)
        return 1
    want = {(BTF_KIND_FUNC, "update_socket_protocol"), (BTF_KIND_STRUCT, "smc_hs_ctrl")}
    ids = btf_ids(BTF_PATH, want)
    fid = ids.get((BTF_KIND_FUNC, "update_socket_protocol"))
    say(fid is not None, "%s: FUNC update_socket_protocol (BTF id %s)" % (BTF_PATH, fid))
    sid = ids.get((BTF_KIND_STRUCT, "smc_hs_ctrl"))
    say(sid is not None, "%s: struct smc_hs_ctrl (BTF id %s): the smc_hs_ctrl struct_ops type" % (BTF_PATH, sid))
    hs = "/proc/sys/net/smc/hs_ctrl"
    say(os.path.exists(hs), "sysctl net.smc.hs_ctrl %s" % (
        "= %r" % open(hs).read().strip() if os.path.exists(hs) else "missing (CONFIG_SMC_HS_CTRL_BPF)"))
    if fid is None:
        return 1
    prog = fmod_ret_program(os.getpid())
    insns = ctypes.create_string_buffer(prog, len(prog))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_TRACING, len(prog) // 8,
                     ctypes.addressof(insns), ctypes.addressof(lic), 1, len(log), ctypes.addressof(log))
    attr[48:48 + 12] = b"envoy_smc_pr"
    struct.pack_into("<I", attr, 68, BPF_MODIFY_RETURN)
    struct.pack_into("<I", attr, 108, fid)
    try:
        prog_fd = bpf(BPF_PROG_LOAD, bytes(attr))
    except OSError as e:
        say(False, "fmod_ret program on update_socket_protocol: load failed: %s; verifier: %s"
            % (e.strerror, log.value.decode(errors="replace").strip()[-400:]))
        return 1
    say(True, "fmod_ret program on update_socket_protocol loaded (fd %d)" % prog_fd)
    before = protocol_of_new_socket()
    try:
        link = bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI4x", 0, prog_fd))
    except OSError as e:
        say(False, "attaching it failed: %s (BPF trampolines need CONFIG_FUNCTION_TRACER)" % e.strerror)
        os.close(prog_fd)
        return 1
    during = protocol_of_new_socket()
    os.close(link)
    os.close(prog_fd)
    after = protocol_of_new_socket()
    say(before == socket.IPPROTO_TCP and during == IPPROTO_SMC and after == socket.IPPROTO_TCP,
        "socket(AF_INET, SOCK_STREAM, 0) gives protocol %d before, %d attached (IPPROTO_SMC = 256), %d detached"
        % (before, during, after))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
