"""A real Orthanc PACS for tests and the bench: its own config, storage, loopback ports and routing script.

Orthanc (Debian ``orthanc``) with the DICOMweb plugin (``orthanc-dicomweb``) is started as a
subprocess. Its Lua ``OnStoredInstance`` sends every CR/DX instance that did not come from the
node to it, which is the routing rule a hospital PACS administrator sets up (see
docs/how-to/pacs.md, which shows the same script).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)

ROUTING_LUA = """\
-- Send every CR/DX image that did not come from the pneumoscope node to it.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'CR' or modality == 'DX') and origin['RemoteAet'] ~= '{node_aet}' then
    SendToModality(instanceId, 'pneumoscope')
  end
end
"""


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, from the Debian package's file list."""
    for candidate in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",):
        if Path(candidate).exists():
            return candidate
    try:
        out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    libs = [line for line in out.splitlines() if "DicomWeb" in line and ".so" in line and Path(line).is_file()]
    return libs[0] if libs else None


def missing_tools() -> list[str]:
    """What the Orthanc tests need and this machine lacks (apt: orthanc orthanc-dicomweb dcmtk dicom3tools)."""
    missing = []
    if ORTHANC is None:
        missing.append("Orthanc (apt install orthanc)")
    if dicomweb_plugin() is None:
        missing.append("the Orthanc DICOMweb plugin (apt install orthanc-dicomweb)")
    for tool, pkg in (("dcmsend", "dcmtk"), ("dciodvfy", "dicom3tools")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt install {pkg})")
    return missing


class Orthanc:
    """One Orthanc process on loopback; ``start()``/``stop()`` keep the storage between runs."""

    def __init__(self, workdir: Path, http_port: int, dicom_port: int, node_port: int,
                 node_aet: str = "PNEUMOSCOPE", aet: str = "ORTHANC") -> None:
        self.workdir = Path(workdir)
        self.http_port, self.dicom_port, self.aet = http_port, dicom_port, aet
        self.url = f"http://127.0.0.1:{http_port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "route.lua").write_text(ROUTING_LUA.replace("{node_aet}", node_aet), encoding="utf-8")
        config: dict[str, Any] = {
            "Name": "pneumoscope-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomScuTimeout": 10,
            # Close each association after use: a cached one to a node that restarted fails once.
            "DicomAssociationCloseDelay": 0,
            "DicomModalities": {"pneumoscope": [node_aet, "127.0.0.1", node_port]},
            "LuaScripts": [str(self.workdir / "route.lua")],
            "Plugins": [p for p in [dicomweb_plugin()] if p],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "ConcurrentJobs": 4,
        }
        self.config = self.workdir / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Orthanc":
        assert ORTHANC is not None
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see {self.workdir / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start in {timeout}s; see {self.workdir / 'orthanc.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    # ------------------------------------------------------------------ REST

    def get(self, path: str) -> Any:
        r = requests.get(f"{self.url}{path}", timeout=10)
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.content

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Simplified tags of every instance Orthanc holds in a study (empty if none)."""
        r = requests.post(f"{self.url}/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}},
                          timeout=10)
        r.raise_for_status()
        out = []
        for iid in r.json():
            tags = self.get(f"/instances/{iid}/simplified-tags")
            tags["_id"] = iid
            out.append(tags)
        return out

    def download(self, instance_id: str, path: Path) -> Path:
        r = requests.get(f"{self.url}/instances/{instance_id}/file", timeout=10)
        r.raise_for_status()
        path.write_bytes(r.content)
        return path


def dcmsend(port: int, *files: Path, aec: str = "ORTHANC", aet: str = "MODALITY") -> None:
    """Send files with DCMTK's dcmsend (the reference C-STORE SCU), failing loudly."""
    out = subprocess.run(["dcmsend", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"dcmsend failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
