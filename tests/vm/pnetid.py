#!/usr/bin/env python3
"""tests/vm/pnetid.py DEVICE PNETID -- inside the test VM: gives the SMC-D device DEVICE (the dibs
loopback device is "lo") the PNET ID PNETID through the kernel's SMC_PNETID generic netlink
family (ADD with NAME and IBNAME, as smc-tools' `smc_pnet -a -D DEVICE PNETID` does).

Why: an SMC client offers an SMC-D device only when it has no PNET ID or a netdev of its netns
carries the same one (net/smc/af_smc.c, smc_find_ism_v2_device_clnt). A PNET ID that no netdev has
therefore takes the loopback device out of every proposal, and connections between the VM's
two addresses are SMC-R again (run.sh --smcd-loopback off). Exit 0 on success, 1 with the
kernel's errno otherwise.
"""
import errno
import os
import socket
import struct
import sys

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
SMC_PNETID_ADD = 2
SMC_PNETID_NAME = 1
SMC_PNETID_IBNAME = 3


def attr(ty, data):
    a = struct.pack("HH", 4 + len(data), ty) + data
    return a + b"\0" * (-len(a) % 4)


def request(sock, ty, flags, cmd, version, attrs, seq):
    body = struct.pack("BBH", cmd, version, 0) + b"".join(attrs)
    sock.send(struct.pack("IHHII", 16 + len(body), ty, NLM_F_REQUEST | flags, seq, 0) + body)
    data = sock.recv(65536)
    length, mtype = struct.unpack_from("IH", data)
    if mtype == NLMSG_ERROR:
        (err,) = struct.unpack_from("i", data, 16)
        if err:
            raise OSError(-err, os.strerror(-err))
    return data[:length]


def family_id(sock, name):
    reply = request(sock, GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, 1,
                    [attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")], 1)
    off = 20
    while off + 4 <= len(reply):
        alen, aty = struct.unpack_from("HH", reply, off)
        if alen < 4:
            break
        if aty == CTRL_ATTR_FAMILY_ID:
            return struct.unpack_from("H", reply, off + 4)[0]
        off += (alen + 3) & ~3
    raise OSError(errno.ENOENT, "no family id in the nlctrl reply")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    device, pnetid = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    try:
        fid = family_id(sock, "SMC_PNETID")
        request(sock, fid, NLM_F_ACK, SMC_PNETID_ADD, 1,
                [attr(SMC_PNETID_NAME, pnetid.encode() + b"\0"),
                 attr(SMC_PNETID_IBNAME, device.encode() + b"\0")], 2)
    except OSError as e:
        sys.exit(f"pnetid.py: SMC_PNETID ADD {pnetid} for {device}: {e.strerror}")


if __name__ == "__main__":
    main()
