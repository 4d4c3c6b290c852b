"""What a user's code tries from inside a notebook or a job container, as one Python
script run there (``python3 -c PROBE``); it prints one JSON line of findings.

Nothing here needs privileges to try, and each attempt is one a user could make: write
into the system's directories, become root through a setuid program, mount, open raw
sockets, take a file for root, find the Docker socket or reach the engine and the
proxy's API on the host, see host directories mounted in."""

from __future__ import annotations

PROBE = r'''
import json, os, socket, subprocess, sys

found = {"uid": os.getuid(), "gid": os.getgid()}
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
found["cap_eff"] = status["CapEff"].strip()
found["no_new_privs"] = status["NoNewPrivs"].strip()
found["seccomp"] = status["Seccomp"].strip()

written = []
for path in ("/etc/dockyard-probe", "/usr/local/dockyard-probe", "/dockyard-probe",
             "/var/lib/dockyard-probe", "/root/dockyard-probe", "/opt/dockyard-probe"):
    try:
        with open(path, "w") as handle:
            handle.write("x")
        written.append(path)
    except OSError:
        pass
found["written_outside"] = written
for extra in sys.argv[1:]:
    try:
        with open(extra, "w") as handle:
            handle.write("x")
        found.setdefault("written_extra", []).append(extra)
    except OSError:
        pass

try:
    os.setuid(0)
    found["setuid0"] = True
except PermissionError:
    found["setuid0"] = False
mount = subprocess.run(["mount", "-t", "tmpfs", "none", "/tmp"], capture_output=True)
found["mount_refused"] = mount.returncode != 0
su = subprocess.run(["su", "-c", "id -u"], capture_output=True, stdin=subprocess.DEVNULL,
                    timeout=10)
found["su_root"] = su.returncode == 0 and su.stdout.strip() == b"0"
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    found["raw_socket"] = True
except PermissionError:
    found["raw_socket"] = False
open("/tmp/dockyard-probe-own", "w").close()
try:
    os.chown("/tmp/dockyard-probe-own", 0, 0)
    found["chown_root"] = True
except PermissionError:
    found["chown_root"] = False

found["docker_socket"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock",
                                      "/var/run/docker", "/run/containerd/containerd.sock")
                          if os.path.exists(p)]
gateway = None
for line in open("/proc/net/route").read().splitlines()[1:]:
    fields = line.split()
    if fields[1] == "00000000":
        gateway = socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
found["gateway"] = gateway
answered = []
for port in [2375, 2376] + [int(p) for p in os.environ.get("PROBE_PORTS", "").split(",") if p]:
    if gateway is None:
        break
    try:
        with socket.create_connection((gateway, port), timeout=2):
            answered.append(port)
    except OSError:
        pass
found["gateway_ports_answering"] = answered

host_mounts = []
pseudo = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay"}
# The engine's own: name resolution files, and its init (read-only) when init is on.
docker_managed = {"/etc/resolv.conf", "/etc/hostname", "/etc/hosts", "/usr/sbin/docker-init"}
for line in open("/proc/self/mountinfo"):
    parts = line.split()
    root, point = parts[3], parts[4]
    fstype = parts[parts.index("-") + 1]
    if fstype in pseudo or point in docker_managed:
        continue
    host_mounts.append({"point": point, "source": root, "type": fstype})
found["host_mounts"] = host_mounts
print("PROBE " + json.dumps(found), flush=True)
'''

FORK_BOMB = r'''
import errno, os, signal, time
children = []
refused = None
while len(children) < 5000:
    try:
        pid = os.fork()
    except OSError as exc:
        refused = errno.errorcode.get(exc.errno, str(exc.errno))
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
print(f"FORKS {len(children)} {refused}", flush=True)
'''

# Touches every page it allocates, so the memory is really used (bytearray(n) alone
# would be mapped lazily and never count).
EAT_MEMORY = r'''
import sys
chunks = []
for _ in range(int(sys.argv[1])):
    chunks.append(b"x" * (16 << 20))
print("SURVIVED", flush=True)
'''
