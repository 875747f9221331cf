#!/usr/bin/python3
"""A FUSE file system with one file, `disk`, that reads like IMAGE except
where it fails: every read touching a bad range returns EIO.

    faulty_fuse.py [--delay SECONDS] IMAGE MOUNTPOINT [START:LEN[:TRIES]]...

START and LEN are bytes. With TRIES the range fails only its first TRIES
reads, then reads (a sector that comes back on a retry). Mounted with
direct_io, so the kernel passes reads through as asked, in size and
offset, and the loop device on top returns EIO for exactly those sectors.
With --delay every read first sleeps that long (a slow disk, to interrupt).
Runs in the foreground until unmounted (fusermount -u / umount)."""

import errno
import os
import stat
import sys
import threading
import time

try:  # Debian's python3-fusepy names the module fusepy
    from fusepy import FUSE, FuseOSError, Operations
except ImportError:
    from fuse import FUSE, FuseOSError, Operations


class Faulty(Operations):
    def __init__(self, image, bad, delay):
        self.delay = delay
        self.fd = os.open(image, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.bad = bad  # [start, end, tries left or None]
        self.mutex = threading.Lock()

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/disk":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1,
                    "st_size": self.size, "st_blksize": 512}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "disk"]

    def open(self, path, flags):
        if path != "/disk":
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        if self.delay:
            time.sleep(self.delay)
        end = offset + size
        with self.mutex:
            for area in self.bad:
                start, stop, tries = area
                if start < end and offset < stop:
                    if tries is None:
                        raise FuseOSError(errno.EIO)
                    if tries > 0:
                        area[2] = tries - 1
                        raise FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)


def main():
    args = sys.argv[1:]
    delay = 0.0
    if args[0] == "--delay":
        delay = float(args[1])
        args = args[2:]
    image, mnt = args[0], args[1]
    bad = []
    for spec in args[2:]:
        parts = [int(p, 0) for p in spec.split(":")]
        tries = parts[2] if len(parts) > 2 else None
        bad.append([parts[0], parts[0] + parts[1], tries])
    FUSE(Faulty(image, bad, delay), mnt, foreground=True, direct_io=True,
         allow_other=True, ro=True)


if __name__ == "__main__":
    main()
