"""Escape suite, privilege and network: the syscalls an escape needs, and every way out to a network."""

from __future__ import annotations

import pytest

from support.attacks import run_attack

pytestmark = [pytest.mark.docker]

PRIVILEGE_PROBE = r"""
import ctypes, errno, os, platform, socket, stat
libc = ctypes.CDLL(None, use_errno=True)
NR = {  # syscall numbers: x86_64, aarch64
    'init_module': (175, 105), 'finit_module': (313, 273), 'delete_module': (176, 106),
    'bpf': (321, 280), 'perf_event_open': (298, 241), 'kexec_load': (246, 104), 'reboot': (169, 142),
}
arch = 0 if platform.machine() == 'x86_64' else 1

def outcome(result):
    return 'SUCCEEDED' if result != -1 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def syscall(name, *args):
    return outcome(libc.syscall(NR[name][arch], *args))

def attempt(action):
    try:
        action()
        return 'SUCCEEDED'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

child = os.fork()
if child == 0:
    import time
    time.sleep(30)
    os._exit(0)
report = {
    'setuid(0)': attempt(lambda: os.setuid(0)),
    'setgid(0)': attempt(lambda: os.setgid(0)),
    'ptrace attach to pid 1': outcome(libc.ptrace(16, 1, None, None)),
    'read /proc/1/mem': attempt(lambda: open('/proc/1/mem', 'rb').read(1)),
    'mount tmpfs': outcome(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)),
    'unshare user namespace': outcome(libc.unshare(0x10000000)),
    'unshare mount namespace': outcome(libc.unshare(0x00020000)),
    'chroot': outcome(libc.chroot(b'/tmp')),
    'init_module': syscall('init_module', None, 0, b''),
    'finit_module': syscall('finit_module', 0, b'', 0),
    'delete_module': syscall('delete_module', b'ext4', 0),
    'bpf': syscall('bpf', 0, None, 0),
    'perf_event_open': syscall('perf_event_open', None, 0, -1, -1, 0),
    'kexec_load': syscall('kexec_load', 0, 0, None, 0),
    'reboot': syscall('reboot', 0xfee1dead, 672274793, 0x1234567, None),
    'raw IP socket': attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    'packet socket': attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)),
    'mknod a block device': attempt(lambda: os.mknod('/tmp/sda', 0o600 | stat.S_IFBLK, os.makedev(8, 0))),
}
os.kill(child, 9)
os.waitpid(child, 0)
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.write(write_end, outcome(libc.ptrace(16, os.getppid(), None, None)).encode())
    os._exit(0)
os.waitpid(child, 0)
report['ptrace attach to the kernel from its child'] = os.read(read_end, 100).decode()
setuid_files = []
for top in ('/usr', '/bin', '/sbin', '/opt', '/etc'):
    for root, _, files in os.walk(top):
        for name in files:
            try:
                mode = os.lstat(os.path.join(root, name)).st_mode
            except OSError:
                continue
            if mode & (stat.S_ISUID | stat.S_ISGID):
                setuid_files.append(os.path.join(root, name))
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines() if ':' in line)
report['setuid binaries'] = setuid_files
report['/proc owner of pid 1 and of the kernel'] = [os.stat(f'/proc/{p}/mem').st_uid for p in ('1', 'self')]
report['identity'] = [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
report['capabilities'] = sorted({status[k].strip() for k in status if k.startswith('Cap')})
report['no_new_privs'] = status['NoNewPrivs'].strip()
report['seccomp'] = status['Seccomp'].strip()
print('REPORT:', report)
"""


@pytest.mark.attack("privilege")
def test_privileged_operations_are_refused(runtime_dir, tmp_path, observe):
    run = run_attack([PRIVILEGE_PROBE], runtime_dir, tmp_path)
    report = run.report(0)
    assert report.pop("setuid binaries") == []
    # The /proc files of a non-dumpable process belong to root: the launcher and the kernel both are.
    assert report.pop("/proc owner of pid 1 and of the kernel") == [0, 0]
    assert report.pop("identity") == [10001, 10001, 10001, [10001]]
    assert report.pop("capabilities") == ["0000000000000000"]
    assert report.pop("no_new_privs") == "1" and report.pop("seccomp") == "2"
    for action, result in report.items():
        assert result in {"EPERM", "EACCES", "ENOSYS"}, (action, result)
        observe(action, result)
    observe("find setuid/setgid binaries", "none (stripped from the image)")
    observe("is the init or the kernel dumpable?", "no: their /proc/PID/mem belongs to root")
    observe("identity and capabilities", "uid 10001, no capabilities, no_new_privs, seccomp filter on")
    assert run.survived and run.leftovers == []


NETWORK_PROBE = r"""
import errno, socket
def attempt(action):
    try:
        action()
        return 'CONNECTED'
    except socket.gaierror as e:
        return f'DNS failure ({e.args[1]})'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def tcp(host, port):
    socket.create_connection((host, port), timeout=2).close()
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    query = b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01'
    s.sendto(query, (host, port))
    s.recvfrom(512)
def tcp6(host, port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((host, port))
report = {
    'interfaces': sorted(name for _, name in socket.if_nameindex()),
    'TCP to 1.1.1.1:443': attempt(lambda: tcp('1.1.1.1', 443)),
    'UDP DNS query to 8.8.8.8:53': attempt(lambda: udp('8.8.8.8', 53)),
    'DNS lookup of example.com': attempt(lambda: socket.getaddrinfo('example.com', 443)),
    'TCP to the cloud metadata address': attempt(lambda: tcp('169.254.169.254', 80)),
    'TCP to the Docker bridge gateway': attempt(lambda: tcp('172.17.0.1', 2375)),
    'TCP over IPv6 to 2606:4700:4700::1111': attempt(lambda: tcp6('2606:4700:4700::1111', 443)),
    'TCP to a host service port on loopback': attempt(lambda: tcp('127.0.0.1', HOST_SERVICE_PORT)),
}
print('REPORT:', report)
"""


@pytest.mark.attack("network")
def test_no_network_egress(runtime_dir, tmp_path, observe):
    import socket

    host_service = socket.create_server(("127.0.0.1", 0))  # a service on the host's loopback
    port = host_service.getsockname()[1]
    try:
        run = run_attack([NETWORK_PROBE.replace("HOST_SERVICE_PORT", str(port))], runtime_dir, tmp_path)
    finally:
        host_service.close()
    report = run.report(0)
    assert report.pop("interfaces") == ["lo"]
    assert report.pop("TCP to a host service port on loopback") == "ECONNREFUSED"  # its own loopback
    unreachable = {"ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL", "EAFNOSUPPORT"}
    for target, result in report.items():
        assert result in unreachable or result.startswith("DNS failure"), (target, result)
        observe(target, result)
    observe("list network interfaces", "loopback only")
    observe("TCP to a service on the host's 127.0.0.1", "ECONNREFUSED (the sandbox has its own loopback)")
    assert run.survived and run.leftovers == []
