"""The processes the fake kernel32 knows, with known contents, for the Windows contract tests."""

from __future__ import annotations

from pss_cli.model import MemoryProtection, MemoryState, MemoryType
from pss_cli.platform.windows import abi
from pss_cli.platform.windows.backend import WindowsBackend
from tests.windows.fake_kernel32 import FakeKernel32, FakeObject, FakeProcess, FakeRegion, FakeThread

TARGET = 4242
RECEIVER = 5151
OTHER = 6161


def target_process() -> FakeProcess:
    return FakeProcess(
        pid=TARGET,
        ppid=1000,
        image="C:\\Apps\\target.exe",
        threads=[
            FakeThread(tid=11, rip=0x7FF7_0000_1000, rsp=0x0000_00AA_0000, priority=10),  # boosted above its base
            FakeThread(tid=12, rip=0x7FF7_0000_2000, rsp=0x0000_00BB_0000, suspend_count=1),
            FakeThread(tid=13, rip=0x7FF7_0000_3000, rsp=0x0000_00CC_0000, terminated=True),
        ],
        objects=[
            FakeObject(0x4, abi.PSS_OBJECT_TYPE_UNKNOWN, "File", "\\Device\\HarddiskVolume3\\data\\log.txt"),
            FakeObject(0x8, abi.PSS_OBJECT_TYPE_EVENT, "Event", "\\BaseNamedObjects\\ready", inherit=True),
            FakeObject(0xC, abi.PSS_OBJECT_TYPE_MUTANT, "Mutant", None, granted_access=0x1F0001),
            FakeObject(0x10, abi.PSS_OBJECT_TYPE_UNKNOWN, "File", "\\Device\\NamedPipe\\pipe-1"),
            FakeObject(0x14, abi.PSS_OBJECT_TYPE_UNKNOWN, "File", "\\Device\\Afd"),
        ],
        regions=[
            FakeRegion(0x10000, 0x10000, MemoryState.FREE, 0, 0),
            FakeRegion(0x20000, 0x2000, MemoryState.COMMIT, MemoryProtection.READWRITE, MemoryType.PRIVATE),
            FakeRegion(0x30000, 0x8000, MemoryState.RESERVE, 0, MemoryType.PRIVATE),
            FakeRegion(
                0x7FF7_0000_0000,
                0x5000,
                MemoryState.COMMIT,
                MemoryProtection.EXECUTE_READ,
                MemoryType.IMAGE,
                "\\Device\\HarddiskVolume3\\Apps\\target.exe",
            ),
            FakeRegion(
                0x40000,
                0x1000,
                MemoryState.COMMIT,
                MemoryProtection.READWRITE,
                MemoryType.MAPPED,
                "\\Device\\HarddiskVolume3\\data\\shared.bin",
            ),
        ],
    )


def make_world(**target_overrides: object) -> FakeKernel32:
    target = target_process()
    for name, value in target_overrides.items():
        setattr(target, name, value)
    return FakeKernel32(
        [
            target,
            FakeProcess(pid=RECEIVER, ppid=1000, image="C:\\Apps\\receiver.exe"),
            FakeProcess(pid=OTHER, ppid=1000, image="C:\\Apps\\other.exe"),
        ]
    )


def backend_for(fake: FakeKernel32) -> WindowsBackend:
    return WindowsBackend(fake, thread_count=lambda pid: 7)
