#!/usr/bin/python3
"""console_helper.py URI DOMAIN OUT: append DOMAIN's serial console to the file OUT until
killed, through libvirt's console stream (virDomain.openConsole over the remote connection:
the guest's <serial type='pty'> needs no file in its AppArmor profile). A line "send TEXT"
on stdin writes TEXT to the console. When the stream ends (guest stopped, migrated away,
restarted by libvirt) it reopens it; an open stream survives a guest-initiated reset.

Run by the distribution's python3 (python3-libvirt), inside the lab's network namespace
(the driver starts it with nsenter), so the driver itself needs no libvirt bindings."""
import sys
import threading
import time

import libvirt

uri, name, out = sys.argv[1:4]
lock = threading.Lock()
current = {"stream": None}


def stdin_loop():
    for line in sys.stdin:
        if line.startswith("send "):
            data = line[5:].rstrip("\n").encode()
            with lock:
                st = current["stream"]
            if st is not None:
                try:
                    st.send(data)
                except libvirt.libvirtError as e:
                    print(f"console_helper: send failed: {e}", file=sys.stderr, flush=True)


def main():
    libvirt.registerErrorHandler(lambda *_: None, None)   # errors are handled here, not printed
    threading.Thread(target=stdin_loop, daemon=True).start()
    conn = libvirt.open(uri)
    with open(out, "ab", buffering=0) as f:
        while True:
            try:
                dom = conn.lookupByName(name)
                st = conn.newStream(0)
                dom.openConsole(None, st, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            except libvirt.libvirtError:
                time.sleep(0.3)
                continue
            with lock:
                current["stream"] = st
            f.write(b"\n[console attached]\n")
            try:
                while True:
                    data = st.recv(4096)
                    if not data:
                        break
                    f.write(data)
            except libvirt.libvirtError:
                pass
            with lock:
                current["stream"] = None
            try:
                st.abort()
            except libvirt.libvirtError:
                pass
            f.write(b"\n[console detached]\n")
            time.sleep(0.3)


if __name__ == "__main__":
    main()
