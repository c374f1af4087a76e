"""Which process holds a listening socket, from /proc: the socket's inode (tcp: /proc/net/tcp and tcp6; unix:
/proc/net/unix) among a process's open files (/proc/<pid>/fd). Used to check that a `.devinfo` pid is the process
serving its addr (external.py). Linux only; reads this network namespace's tables."""
from __future__ import annotations

import ipaddress
import os


def listening_inodes(network: str, address: str) -> set[int]:
    """Inodes of the sockets listening at `address`: tcp from /proc/net/tcp{,6} (the exact loopback address or a
    wildcard one on that port), unix from /proc/net/unix (a listening stream socket bound to that path)."""
    inodes: set[int] = set()
    if network == "unix":
        try:
            with open("/proc/net/unix") as f:
                next(f)
                for line in f:
                    # Num RefCount Protocol Flags Type St Inode Path; Flags has __SO_ACCEPTCON (0x10000) if listening
                    fields = line.split(None, 7)
                    if len(fields) == 8 and fields[7].rstrip("\n") == address and int(fields[3], 16) & 0x10000:
                        inodes.add(int(fields[6]))
        except OSError:
            pass
        return inodes
    host, _, port_s = address.rpartition(":")
    want = ipaddress.ip_address(host.strip("[]"))
    port = int(port_s)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                rows = [line.split() for line in f]
        except OSError:
            continue
        for fields in rows:
            # sl local_address rem_address st ... inode (field 9); state 0A = LISTEN
            if len(fields) < 10 or fields[3] != "0A":
                continue
            hex_ip, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(hex_ip)
            # the kernel prints each 32-bit word in host byte order (little-endian here)
            ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip == want or ip.is_unspecified:
                inodes.add(int(fields[9]))
    return inodes


def holds_any(pid: int, inodes: set[int]) -> bool:
    """Is one of `inodes` among the sockets process `pid` has open? OSError when its fds cannot be listed."""
    fd_dir = f"/proc/{pid}/fd"
    targets = {f"socket:[{inode}]" for inode in inodes}
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) in targets:
                return True
        except OSError:
            continue
    return False
