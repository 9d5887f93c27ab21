"""A stand-in for GCP's metadata server and the one Compute Engine API call the startup script makes.

Run inside the harness's LAN namespace, listening where the VMs' startup scripts look for the
metadata server. Like GCP's, it tells instances apart by the source address of the request, and:

- answers ``GET /computeMetadata/v1/...`` only with the header ``Metadata-Flavor: Google``
  (403 without it), with ``Metadata-Flavor: Google`` on the response, 404 for what is not set:
  ``instance/attributes/KEY``, ``instance/name``, ``instance/zone``, ``instance/id``,
  ``instance/network-interfaces/0/ip``, ``.../access-configs/0/external-ip``,
  ``project/project-id``, ``instance/service-accounts/default/{email,token}``;
- accepts ``PUT instance/guest-attributes/NAMESPACE/KEY`` (and serves it back) only when the
  instance's metadata has ``enable-guest-attributes=TRUE`` (403 otherwise, as GCP does);
- answers ``GET /compute/v1/projects/P/zones/Z/instances/N/getGuestAttributes?variableKey=NS/KEY``
  with ``{"variableKey", "variableValue"}`` for a bearer token this server issued to an instance
  whose service account was granted read access to instance N (``guest_attribute_readers`` in the
  config: the module's ``google_compute_instance_iam_member``), 401/403/404 otherwise.

Every guest attribute written is also saved to ``STATE_DIR/guest-attributes.json`` and every
request is appended to ``STATE_DIR/requests.log``, for the test to read.

Usage: python metadata_emulator.py CONFIG.json STATE_DIR   (CONFIG: see harness.py)
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MD_PREFIX = "/computeMetadata/v1/"
API_PREFIX = "/compute/v1/"


class State:
    def __init__(self, config: dict, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.by_ip: dict[str, dict] = {vm["ip"]: vm for vm in config["instances"]}
        self.by_name: dict[str, dict] = {vm["name"]: vm for vm in config["instances"]}
        self.guest: dict[str, dict[str, str]] = {vm["name"]: {} for vm in config["instances"]}
        self.tokens: dict[str, str] = {}  # token -> service account email
        self.lock = threading.Lock()

    def save(self) -> None:
        tmp = self.state_dir / "guest-attributes.json.tmp"
        tmp.write_text(json.dumps(self.guest, indent=2, sort_keys=True))
        tmp.replace(self.state_dir / "guest-attributes.json")

    def note(self, line: str) -> None:
        with (self.state_dir / "requests.log").open("a") as f:
            f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    server_version = "Metadata Server for VM"
    state: State  # set on the class before serving

    def log_message(self, format: str, *args: object) -> None:
        self.state.note(f"{self.client_address[0]} {format % args}")

    def _send(self, code: int, body: str = "", content_type: str = "application/text") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _caller(self) -> dict | None:
        return self.state.by_ip.get(self.client_address[0])

    def _metadata_checks(self) -> dict | None:
        """The caller's instance, or None after answering with the error GCP would give."""
        if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
            self._send(403, "Missing required header: Metadata-Flavor: Google\n")
            return None
        vm = self._caller()
        if vm is None:
            self._send(404, f"no instance has the address {self.client_address[0]}\n")
            return None
        return vm

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith(API_PREFIX):
            return self._compute_api(url.path[len(API_PREFIX):], parse_qs(url.query))
        if not url.path.startswith(MD_PREFIX):
            return self._send(404, "not found\n")
        vm = self._metadata_checks()
        if vm is None:
            return None
        path = url.path[len(MD_PREFIX):]
        value = self._metadata_value(vm, path)
        if value is None:
            return self._send(404, "not found\n")
        return self._send(200, value, "application/json" if path.endswith("/token") else "application/text")

    def _metadata_value(self, vm: dict, path: str) -> str | None:
        project = self.state.config["project"]
        if path.startswith("instance/attributes/"):
            return vm.get("attributes", {}).get(path[len("instance/attributes/"):])
        if path.startswith("instance/guest-attributes/"):
            return self.state.guest[vm["name"]].get(path[len("instance/guest-attributes/"):])
        if path == "instance/service-accounts/default/token":
            token = "ya29.emulated-" + secrets.token_urlsafe(24)
            with self.state.lock:
                self.state.tokens[token] = vm["service_account"]
            return json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        simple = {
            "instance/name": vm["name"],
            "instance/id": str(vm.get("id", abs(hash(vm["name"])) % 10**18)),
            "instance/zone": f"projects/{project['number']}/zones/{vm['zone']}",
            "instance/hostname": f"{vm['name']}.{vm['zone']}.c.{project['id']}.internal",
            "instance/network-interfaces/0/ip": vm["ip"],
            "instance/network-interfaces/0/access-configs/0/external-ip": vm.get("external_ip"),
            "instance/service-accounts/default/email": vm["service_account"],
            "project/project-id": project["id"],
            "project/numeric-project-id": str(project["number"]),
        }
        return simple.get(path)

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        vm = self._metadata_checks()
        if vm is None:
            return None
        prefix = MD_PREFIX + "instance/guest-attributes/"
        key = url.path[len(prefix):] if url.path.startswith(prefix) else ""
        if key.count("/") != 1 or not all(key.split("/")):
            return self._send(404, "not found\n")
        if vm.get("attributes", {}).get("enable-guest-attributes", "").upper() != "TRUE":
            return self._send(403, "Guest attributes endpoint access is disabled.\n")
        value = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with self.state.lock:
            self.state.guest[vm["name"]][key] = value
            self.state.save()
        return self._send(200, "")

    def _api_error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"error": {"code": code, "message": message}}), "application/json")

    def _compute_api(self, path: str, query: dict[str, list[str]]) -> None:
        auth = self.headers.get("Authorization", "")
        email = self.state.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if email is None:
            return self._api_error(401, "Request had invalid authentication credentials.")
        parts = path.split("/")  # projects/P/zones/Z/instances/N/getGuestAttributes
        shape = [parts[i] for i in (0, 2, 4, 6)] if len(parts) == 7 else []
        if shape != ["projects", "zones", "instances", "getGuestAttributes"]:
            return self._api_error(404, "not emulated")
        target = self.state.by_name.get(parts[5])
        if target is None or parts[1] != self.state.config["project"]["id"] or parts[3] != target["zone"]:
            return self._api_error(404, f"instance {parts[5]} not found")
        if email not in target.get("guest_attribute_readers", []):
            return self._api_error(403, f"Required 'compute.instances.getGuestAttributes' permission for '{path}'")
        key = (query.get("variableKey") or [""])[0]
        value = self.state.guest[target["name"]].get(key)
        if value is None:
            return self._api_error(404, f"The resource 'guest attribute {key}' was not found")
        body = {"kind": "compute#guestAttributes", "variableKey": key, "variableValue": value,
                "selfLink": f"https://compute.googleapis.com/compute/v1/{path}"}
        return self._send(200, json.dumps(body), "application/json")


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    state_dir = Path(sys.argv[2])
    state_dir.mkdir(parents=True, exist_ok=True)
    Handler.state = State(config, state_dir)
    Handler.state.save()
    server = ThreadingHTTPServer((config["listen"]["host"], config["listen"]["port"]), Handler)
    server.daemon_threads = True
    (state_dir / "ready").write_text("ok\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
