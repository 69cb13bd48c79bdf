#!/usr/bin/env python3
"""Run the ``socketcan`` tests in a small QEMU VM whose kernel has SocketCAN.

Where the host kernel has no AF_CAN or no vcan (containers, some CI machines), this
boots Debian's stock kernel under QEMU (KVM where /dev/kvm is usable, else TCG
emulation) with an initramfs built here: a static busybox and the kernel modules
for virtio-9p, overlayfs, vcan, CAN_RAW, CAN_BCM and CAN_ISOTP. The guest mounts
the host's root file system read-only over virtio-9p under a tmpfs overlay (so
writes stay in the guest), creates ``vcan0``, and runs this project's pytest
with the same Python interpreter, at the same path, on the ``socketcan`` tests.
The VM has no network device: CAN traffic stays on its vcan interface.

    .venv/bin/python .ci/vcan_vm.py [OPTIONS] [-- PYTEST_ARGS...]

Without PYTEST_ARGS it runs ``-m socketcan`` on the test files that hold such tests.
Exit status: the in-VM pytest's own, or 77 when the VM cannot run here (no QEMU
and no way to install it, no kernel to be had: the reason is printed on a line
``vcan-vm: skipped: REASON``), 124 when the run timed out, 125 when the VM gave
no result.

The kernel and busybox are Debian packages fetched with ``apt-get download`` and
unpacked with ``dpkg-deb`` (nothing is installed on the host); as root, a missing
qemu-system-x86 is installed with apt-get (``--no-install`` refuses). Packages and
the built VM files are cached in $HIL_VCAN_VM_CACHE (default
~/.cache/hil-vcan-vm); delete that directory to pick up a newer kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

PROJECT_DIR = Path(__file__).resolve().parent.parent

EXIT_SKIPPED = 77
EXIT_TIMEOUT = 124
EXIT_NO_RESULT = 125
EXIT_USAGE = 2

#: Set inside the VM: the tests it runs must never start another VM.
GUEST_ENV = "HIL_VCAN_VM_GUEST"
CACHE_ENV = "HIL_VCAN_VM_CACHE"
VCAN = "vcan0"

KERNEL_PACKAGE = "linux-image-amd64"  # Debian's metapackage: depends on the current kernel
BUSYBOX_PACKAGE = "busybox-static"
QEMU_PACKAGE = "qemu-system-x86"
QEMU_BINARY = "qemu-system-x86_64"
#: Modules the guest loads (their dependencies are added from their .modinfo).
MODULES = (
    "virtio_pci",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "overlay",
    "vcan",
    "can_raw",
    "can_bcm",
    "can_isotp",
)
KERNEL_ARGS = "console=ttyS0 panic=-1 quiet loglevel=4"

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12
PR_SET_PDEATHSIG = 1

# The guest's /init (busybox ash). /share is the run's writable 9p share: vm.conf in it
# says where the job lives; the job's output and exit status are written back there.
INIT_SCRIPT = r"""#!/bin/busybox sh
# Written by .ci/vcan_vm.py: mount the host's root (virtio-9p, read-only) under a
# tmpfs overlay, create the vcan interface, run the job in a chroot, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "vcan-vm(guest): $*"; }
say "init started"
halt() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
die() { say "error: $*"; halt; }
while read -r module; do
    insmod "/modules/$module" || die "cannot load $module"
done < /modules/order
opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /share /lower /upper /newroot
mount -t 9p -o "$opts" hilvm /share || die "cannot mount the run's share"
. /share/vm.conf
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || die "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \
    || die "cannot mount the overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts "/newroot$SHARE_DIR"
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -o bind /share "/newroot$SHARE_DIR" || die "cannot bind the share"
ip link set lo up
ip link add dev "$VCAN" type vcan || die "cannot create $VCAN"
ip link set up "$VCAN" || die "cannot bring $VCAN up"
say "$VCAN up after $(cut -d ' ' -f 1 /proc/uptime) s of uptime; running the job"
chroot /newroot /bin/sh "$SHARE_DIR/job.sh" 2>&1 | tee /share/job.log
halt
"""


class VmSkip(Exception):
    """The VM cannot run on this machine; the message says why."""


class VmError(Exception):
    """The VM could not be prepared or gave no result."""


class VmTimeout(VmError):
    """The VM did not finish in time (QEMU was killed)."""


def say(message: str) -> None:
    """Print one line of this script's own output."""
    print(f"vcan-vm: {message}", flush=True)


# ----------------------------------------------------------------------- host tools


def _run(
    command: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class Apt:
    """apt-get and apt-cache; as root, updates the package lists once when they fail."""

    def __init__(self) -> None:
        self.root = os.geteuid() == 0
        self.updated = False
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise VmSkip("apt-get and dpkg-deb (Debian's package tools) are not available")

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        """Run ``tool ARGS``; return its output or raise :class:`VmSkip` with its error."""
        options = ["-o", "APT::Sandbox::User=root"] if self.root and tool == "apt-get" else []
        command = [tool, "-q", *options, *args]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = _run(command, cwd=cwd, env=env)
        if done.returncode != 0 and self.root and not self.updated:
            say(f"{tool} {args[0]} failed; updating the package lists and retrying")
            self.updated = True
            update = _run(["apt-get", "-q", "update"], env=env)
            if update.returncode != 0:
                raise VmSkip(f"apt-get update failed: {_last_line(update.stderr)}")
            done = _run(command, cwd=cwd, env=env)
        if done.returncode != 0:
            raise VmSkip(f"{shlex.join(command)} failed: {_last_line(done.stderr)}")
        return done.stdout


def find_qemu(*, install: bool) -> str:
    """Return the QEMU binary, installing Debian's package as root if allowed."""
    found = shutil.which(QEMU_BINARY)
    if found:
        return found
    missing = f"{QEMU_BINARY} is not installed (Debian package {QEMU_PACKAGE})"
    if not install:
        raise VmSkip(f"{missing}; install it (--no-install: not done here)")
    if os.geteuid() != 0:
        raise VmSkip(f"{missing}; install it, or run as root to let this script do it")
    if shutil.which("apt-get") is None:
        raise VmSkip(f"{missing} and there is no apt-get to install it")
    say(f"installing {QEMU_PACKAGE} (apt-get install --no-install-recommends)")
    started = time.monotonic()
    Apt().run("apt-get", "install", "-y", "--no-install-recommends", QEMU_PACKAGE)
    say(f"installed {QEMU_PACKAGE} in {time.monotonic() - started:.1f} s")
    found = shutil.which(QEMU_BINARY)
    if not found:
        raise VmSkip(f"{QEMU_PACKAGE} was installed but {QEMU_BINARY} is not on PATH")
    return found


def kvm_problem() -> str | None:
    """Say why KVM cannot run the VM here, or return ``None`` if it can."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    if not flags & {"vmx", "svm"}:
        # E.g. a /dev/kvm served by kvm_pvm, which runs only guests built for it.
        return "the CPU shows no vmx/svm flag: no hardware KVM for an ordinary guest"
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    try:
        if fcntl.ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION:
            return "/dev/kvm speaks another KVM API version"
        os.close(fcntl.ioctl(kvm, KVM_CREATE_VM, 0))
    except OSError as exc:
        return f"/dev/kvm cannot create a VM: {exc.strerror}"
    finally:
        os.close(kvm)
    return None


# ----------------------------------------------------------------- kernel and initramfs


def cache_dir() -> Path:
    """Where downloads and built VM files are kept between runs."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hil-vcan-vm"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (one run prepares the cache at a time)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda path: path.stat().st_mtime, default=None)


def fetch_deb(debs: Path, package: str, apt: Apt | None) -> Path:
    """Return the cached .deb of ``package``, downloading it with ``apt-get download``."""
    cached = _newest(list(debs.glob(f"{package}_*.deb")))
    if cached is not None:
        return cached
    apt = apt or Apt()
    say(f"downloading {package} (apt-get download)")
    with tempfile.TemporaryDirectory(dir=debs) as scratch:
        apt.run("apt-get", "download", package, cwd=Path(scratch))
        got = list(Path(scratch).glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise VmSkip(f"apt-get download {package} gave no single .deb: {got}")
        return Path(shutil.move(got[0], debs / got[0].name))


def fetch_kernel_deb(debs: Path) -> Path:
    """Return the cached stock kernel .deb, or download the one Debian's metapackage names."""
    # linux-image-6.1.0-56-amd64_..., not the metapackage linux-image-amd64_...
    cached = _newest(list(debs.glob("linux-image-[0-9]*.deb")))
    if cached is not None:
        return cached
    apt = Apt()
    depends = apt.run("apt-cache", "depends", "--important", KERNEL_PACKAGE)
    names = [
        line.split(":", 1)[1].strip()
        for line in depends.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if not names:
        raise VmSkip(f"cannot tell which kernel {KERNEL_PACKAGE} depends on: {depends!r}")
    return fetch_deb(debs, names[0], apt)


def modinfo(module: Path) -> dict[str, str]:
    """Read the ``.modinfo`` fields of a kernel module (first value of repeated keys)."""
    data = module.read_bytes()
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise VmError(f"{module}: not a 64-bit little-endian ELF file")
    (table_at,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from(
            "<IIQQQQ", data, table_at + index * entry_size
        )
        return name, offset, size

    _, names_at, _ = section(names_index)
    for index in range(count):
        name, offset, size = section(index)
        start = names_at + name
        if data[start : data.index(b"\0", start)] != b".modinfo":
            continue
        info: dict[str, str] = {}
        for field in data[offset : offset + size].split(b"\0"):
            key, sep, value = field.decode("utf-8", "replace").partition("=")
            if sep:
                info.setdefault(key, value)
        return info
    return {}


def _module_key(name: str) -> str:
    return name.removesuffix(".ko").replace("-", "_")


def module_load_order(modules_dir: Path, wanted: Sequence[str]) -> list[Path]:
    """List the module files for ``wanted`` and their dependencies, dependencies first."""
    index = {_module_key(p.name): p for p in (modules_dir / "kernel").rglob("*.ko")}
    builtin_list = modules_dir / "modules.builtin"
    builtin = set()
    if builtin_list.is_file():
        builtin = {_module_key(Path(line).name) for line in builtin_list.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = _module_key(name)
        if key in seen or key in builtin:
            return
        if key not in index:
            raise VmError(f"kernel module {name} is not in {modules_dir}")
        seen.add(key)
        for dependency in modinfo(index[key]).get("depends", "").split(","):
            if dependency:
                visit(dependency)
        order.append(index[key])

    for name in wanted:
        visit(name)
    return order


class Cpio:
    """A cpio archive in the kernel's initramfs format ("newc"), built in memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 0

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._inode += 1
        path = name.encode() + b"\0"
        links = 2 if mode & 0o040000 else 1
        # inode, mode, uid, gid, links, mtime, size, device (2), rdev (2), name size, check
        fields = (self._inode, mode, 0, 0, links, 0, len(data), 0, 0, *rdev, len(path), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._parts += [header, path, b"\0" * (-(len(header) + len(path)) % 4)]
        self._parts += [data, b"\0" * (-len(data) % 4)]

    def directory(self, name: str) -> None:
        """Add a directory."""
        self._add(name, 0o040755)

    def file(self, name: str, data: bytes, *, executable: bool = False) -> None:
        """Add a regular file."""
        self._add(name, 0o100755 if executable else 0o100644, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        """Add a character device node."""
        self._add(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        """Return the archive, with its trailer."""
        self._add("TRAILER!!!", 0)
        return b"".join(self._parts)


@dataclasses.dataclass(frozen=True)
class VmFiles:
    """What QEMU boots: the kernel image and the initramfs built for it."""

    kernel: Path
    initramfs: Path
    release: str


def build_vm_files(cache: Path, kernel_deb: Path, busybox_deb: Path) -> VmFiles:
    """Unpack the kernel and busybox and build the initramfs, once for each recipe."""
    recipe = "\n".join([kernel_deb.name, busybox_deb.name, INIT_SCRIPT, *MODULES])
    built = cache / f"vm-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    if (built / "release").is_file():
        release = (built / "release").read_text().strip()
        return VmFiles(built / "vmlinuz", built / "initramfs.cpio", release)
    say(f"building the VM's initramfs from {kernel_deb.name} and {busybox_deb.name}")
    with tempfile.TemporaryDirectory(dir=cache) as scratch_name:
        scratch = Path(scratch_name)
        for deb, into in ((kernel_deb, "kernel"), (busybox_deb, "busybox")):
            unpack = _run(["dpkg-deb", "-x", str(deb), str(scratch / into)])
            if unpack.returncode != 0:
                raise VmError(f"dpkg-deb -x {deb} failed: {_last_line(unpack.stderr)}")
        images = sorted((scratch / "kernel/boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise VmError(f"{kernel_deb.name} holds no single /boot/vmlinuz-*: {images}")
        release = images[0].name.removeprefix("vmlinuz-")
        modules = module_load_order(scratch / "kernel/lib/modules" / release, MODULES)
        busybox = scratch / "busybox/bin/busybox"
        if not busybox.is_file():
            raise VmError(f"{busybox_deb.name} holds no /bin/busybox")
        archive = Cpio()
        for directory in ("bin", "dev", "proc", "sys", "modules"):
            archive.directory(directory)
        archive.char_device("dev/console", 5, 1)
        archive.char_device("dev/null", 1, 3)
        archive.file("bin/busybox", busybox.read_bytes(), executable=True)
        archive.file("init", INIT_SCRIPT.encode(), executable=True)
        for module in modules:
            archive.file(f"modules/{module.name}", module.read_bytes())
        archive.file("modules/order", "".join(f"{m.name}\n" for m in modules).encode())
        stage = scratch / "vm"
        stage.mkdir()
        shutil.copyfile(images[0], stage / "vmlinuz")
        (stage / "initramfs.cpio").write_bytes(archive.finish())
        (stage / "release").write_text(f"{release}\n")
        stage.rename(built)
    for stale in cache.glob("vm-*"):
        if stale != built:
            shutil.rmtree(stale, ignore_errors=True)
    say(f"kernel {release}; modules: {', '.join(m.name for m in modules)}")
    return VmFiles(built / "vmlinuz", built / "initramfs.cpio", release)


# ------------------------------------------------------------------------------ the run

#: The guest's init starts its lines with this; under KVM, none in time means a stalled VM.
GUEST_MARK = b"vcan-vm(guest):"
#: How long a KVM boot may take to reach the guest's init before TCG takes over.
KVM_START_S = 20.0
#: Always given to the in-VM pytest: its cache would be thrown away with the guest's overlay,
#: and hypothesis's plugin costs seconds of start-up under TCG while no socketcan test uses it.
FIXED_PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
SOCKETCAN_MARK = re.compile(r"^(pytestmark = |\s*@)pytest\.mark\.socketcan\b", re.MULTILINE)


def default_pytest_args(project_dir: Path) -> tuple[str, ...]:
    """Select the ``socketcan`` tests, collecting only the test files that hold some."""
    files = sorted(
        str(path.relative_to(project_dir))
        for path in (project_dir / "tests").glob("test_*.py")
        if SOCKETCAN_MARK.search(path.read_text(encoding="utf-8"))
    )
    return ("-m", "socketcan", *files)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What to run in the VM and how."""

    python: str
    project_dir: Path
    pytest_args: tuple[str, ...]
    accel: str
    cpus: int
    memory_mb: int
    timeout_s: float
    echo: bool
    junit_xml: Path | None


@dataclasses.dataclass(frozen=True)
class VmResult:
    """What came back from the VM."""

    status: int
    accel: str
    duration_s: float
    summary: str


class KvmStalled(VmError):
    """Under KVM the guest did not reach its init in time (e.g. an unusable /dev/kvm)."""


def _qemu_path(path: Path) -> str:
    return str(path).replace(",", ",,")


def qemu_command(qemu: str, files: VmFiles, share: Path, spec: RunSpec) -> list[str]:
    """Build the QEMU command line: no network; the host root and the run's share over 9p."""
    kvm = spec.accel == "kvm"
    return [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-machine",
        "q35",
        "-accel",
        "kvm" if kvm else "tcg,thread=multi",
        "-cpu",
        "host" if kvm else "max",
        "-smp",
        str(spec.cpus),
        "-m",
        str(spec.memory_mb),
        "-kernel",
        str(files.kernel),
        "-initrd",
        str(files.initramfs),
        "-append",
        KERNEL_ARGS,
        "-serial",
        f"file:{_qemu_path(share / 'console.log')}",
        "-nic",
        "none",
        "-device",
        "virtio-rng-pci",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={_qemu_path(share)},mount_tag=hilvm,security_model=none",
    ]


def write_job(share: Path, spec: RunSpec) -> None:
    """Write vm.conf (read by the guest's init) and job.sh (run in the guest's chroot)."""
    q = shlex.quote
    (share / "vm.conf").write_text(f"VCAN={q(VCAN)}\nSHARE_DIR={q(str(share))}\n")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(Path.home()),
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HIL_VCAN": VCAN,
        GUEST_ENV: "1",
    }
    pytest = [
        spec.python,
        "-m",
        "pytest",
        *FIXED_PYTEST_ARGS,
        f"--junitxml={share / 'junit.xml'}",
        *spec.pytest_args,
    ]
    status = q(str(share / "status"))
    (share / "job.sh").write_text(
        "# Written by .ci/vcan_vm.py; runs in the VM, chrooted into the host's root.\n"
        f"cd {q(str(spec.project_dir))} || {{ echo {EXIT_NO_RESULT} > {status}; exit; }}\n"
        + "".join(f"export {key}={q(value)}\n" for key, value in env.items())
        + f"echo {q('$ ' + shlex.join(pytest))}\n"
        + f"{shlex.join(pytest)}\n"
        + f"echo $? > {status}\n"
    )


def _die_with_parent() -> None:
    """In QEMU's child process: be killed if this script dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Console:
    """Follows the guest's serial console file, optionally echoing it."""

    def __init__(self, path: Path, echo: bool) -> None:
        self.path = path
        self.echo = echo
        self.seen = b""

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as console:
            console.seek(len(self.seen))
            new = console.read()
        self.seen += new
        if self.echo and new:
            sys.stdout.write(new.replace(b"\r\n", b"\n").decode("utf-8", "replace"))
            sys.stdout.flush()

    def tail(self, lines: int = 40) -> str:
        text = self.seen.replace(b"\r\n", b"\n").decode("utf-8", "replace").strip()
        return "\n".join(text.splitlines()[-lines:]) or "(nothing)"


def summarize(junit: Path) -> str:
    """Count the tests, failures, errors and skips in pytest's JUnit XML report."""
    if not junit.is_file():
        return "no JUnit report"
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def _wait(process: subprocess.Popen[bytes], console: _Console, spec: RunSpec) -> float:
    started = time.monotonic()
    while True:
        try:
            process.wait(timeout=0.2)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            console.poll()
        elapsed = time.monotonic() - started
        if spec.accel == "kvm" and elapsed > KVM_START_S and GUEST_MARK not in console.seen:
            raise KvmStalled(f"under KVM the guest reached no init in {KVM_START_S:.0f} s")
        if elapsed > spec.timeout_s:
            raise VmTimeout(
                f"the VM did not finish in {spec.timeout_s:.0f} s and was killed; "
                f"its console ended with:\n{console.tail()}"
            )


def boot(qemu: str, files: VmFiles, share: Path, spec: RunSpec) -> VmResult:
    """Boot the VM once, wait for it (or the timeout), and read the job's result."""
    write_job(share, spec)
    console = _Console(share / "console.log", spec.echo)
    command = qemu_command(qemu, files, share, spec)
    say(f"booting ({spec.accel}): {shlex.join(command)}")
    with (share / "qemu.log").open("wb") as qemu_log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=qemu_log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            duration_s = _wait(process, console, spec)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    console.poll()
    status_file = share / "status"
    if not status_file.is_file():
        qemu_says = (share / "qemu.log").read_text(errors="replace").strip()
        raise VmError(
            f"the VM ({spec.accel}) stopped after {duration_s:.1f} s without a result "
            f"(QEMU exit status {process.returncode}); QEMU said: {qemu_says or '(nothing)'}"
            f"\nits console ended with:\n{console.tail()}"
        )
    status = int(status_file.read_text().strip() or EXIT_NO_RESULT)
    junit = share / "junit.xml"
    if spec.junit_xml is not None and junit.is_file():
        shutil.copyfile(junit, spec.junit_xml)
    return VmResult(status, spec.accel, duration_s, summarize(junit))


def run(qemu: str, files: VmFiles, spec: RunSpec, *, keep: bool) -> VmResult:
    """Boot the VM in a fresh share directory (removed afterwards unless ``keep``)."""
    share = Path(tempfile.mkdtemp(prefix="hil-vcan-vm-"))
    try:
        return boot(qemu, files, share, spec)
    finally:
        if keep:
            say(f"kept the run's files in {share}")
        else:
            shutil.rmtree(share, ignore_errors=True)


# ------------------------------------------------------------------------------ the CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (PYTEST_ARGS after ``--``)."""
    parser = argparse.ArgumentParser(
        description="Run the socketcan tests in a QEMU VM with vcan and CAN_ISOTP.",
        epilog=f"Exit status: the in-VM pytest's, or {EXIT_SKIPPED} skipped (reason printed), "
        f"{EXIT_TIMEOUT} timed out, {EXIT_NO_RESULT} no result.",
    )
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="KVM, TCG emulation, or KVM where it is usable (default)",
    )
    parser.add_argument("--cpus", type=int, help="vCPUs (default: 2 with KVM, 1 with TCG)")
    parser.add_argument("--memory-mb", type=int, default=1024, help="guest memory (1024)")
    parser.add_argument(
        "--timeout-s", type=float, default=150.0, help="kill the VM after this long (150)"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs pytest in the VM, at the same path (default: this one)",
    )
    parser.add_argument(
        "--project-dir", type=Path, default=PROJECT_DIR, help="where pytest runs (this project)"
    )
    parser.add_argument("--junit-xml", type=Path, help="copy the in-VM JUnit report here")
    parser.add_argument(
        "--no-install", dest="install", action="store_false", help="never apt-get install QEMU"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's share directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the console")
    parser.add_argument(
        "pytest_args",
        nargs="*",
        help="after --: pytest's arguments (default: -m socketcan and the files with such tests)",
    )
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[str, VmFiles, str]:
    """Find QEMU, the accelerator and the VM files; raise :class:`VmSkip` where impossible."""
    if os.environ.get(GUEST_ENV):
        raise VmSkip("already inside the vcan VM")
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise VmSkip(f"needs Linux on x86_64, not {sys.platform} on {platform.machine()}")
    qemu = find_qemu(install=args.install)
    accel = args.accel
    if accel == "auto":
        problem = kvm_problem()
        accel = "tcg" if problem else "kvm"
        say(f"accelerator: TCG emulation ({problem})" if problem else "accelerator: KVM")
    cache = cache_dir()
    with locked(cache):
        debs = cache / "debs"
        debs.mkdir(exist_ok=True)
        kernel_deb = fetch_kernel_deb(debs)
        busybox_deb = fetch_deb(debs, BUSYBOX_PACKAGE, None)
        files = build_vm_files(cache, kernel_deb, busybox_deb)
    return qemu, files, accel


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare, boot, report; return the exit status."""
    args = parse_args(argv)
    python = Path(args.python)
    if not python.is_absolute() or _run([args.python, "-c", "import pytest"]).returncode:
        say(f"error: {args.python} is not an absolute path to a Python that has pytest")
        return EXIT_USAGE
    project_dir = args.project_dir.resolve()
    started = time.monotonic()
    try:
        qemu, files, accel = prepare(args)
    except VmSkip as skip:
        say(f"skipped: {skip}")
        return EXIT_SKIPPED
    except VmError as exc:
        say(f"error: {exc}")
        return EXIT_NO_RESULT
    say(f"prepared in {time.monotonic() - started:.1f} s (kernel {files.release})")
    spec = RunSpec(
        python=str(python),
        project_dir=project_dir,
        pytest_args=tuple(args.pytest_args) or default_pytest_args(project_dir),
        accel=accel,
        cpus=args.cpus or (2 if accel == "kvm" else 1),
        memory_mb=args.memory_mb,
        timeout_s=args.timeout_s,
        echo=not args.quiet,
        junit_xml=args.junit_xml,
    )
    try:
        try:
            result = run(qemu, files, spec, keep=args.keep)
        except KvmStalled as exc:
            if args.accel != "auto":
                raise
            say(f"{exc}; trying again with TCG emulation")
            spec = dataclasses.replace(spec, accel="tcg", cpus=args.cpus or 1)
            result = run(qemu, files, spec, keep=args.keep)
    except VmTimeout as exc:
        say(f"error: {exc}")
        return EXIT_TIMEOUT
    except VmError as exc:
        say(f"error: {exc}")
        return EXIT_NO_RESULT
    say(
        f"in-VM pytest exit status {result.status} ({result.summary}); the VM "
        f"({result.accel}) ran {result.duration_s:.1f} s, {time.monotonic() - started:.1f} s "
        "in all"
    )
    return result.status


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
