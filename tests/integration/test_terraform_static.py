"""Static checks of terraform/: what can be checked with no cloud and no registry.

Without Terraform: the instance metadata the module sets, the startup script reads and the
namespace harness serves are the same keys.

Always (with a `terraform` binary; scripts/install-terraform builds one from the Go module proxy):
- `terraform fmt -check -recursive` over terraform/ (parses every .tf and .tftest.hcl file);
- the startup template rendered by Terraform's own templatefile() is byte-identical to the
  rendering the namespace harness runs (terraform/test/harness.py), and is valid bash
  (`bash -n`; shellcheck too when installed);
- every variable validation of the module, by `terraform test` on a copy of variables.tf alone
  (a configuration with no resources needs no provider): terraform/test/variables.tftest.hcl.

With the hashicorp/google provider in Terraform's local filesystem mirror
(scripts/install-terraform --google-provider builds it from the Go module proxy):
- `terraform init -backend=false` + `terraform validate` of the module and both examples;
- `terraform test` of the module against a mocked provider (modules/shoal-cluster/tests/):
  firewall rules, metadata, autoscaler, IAM, outputs and the cross-variable preconditions.
Without it, those two tests are skipped, saying so.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "terraform"
MODULE = TF_DIR / "modules" / "shoal-cluster"
sys.path.insert(0, str(TF_DIR / "test"))

import harness  # noqa: E402


def _terraform() -> str | None:
    found = shutil.which("terraform")
    if found:
        return found
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    candidate = Path(gopath) / "bin" / "terraform"
    return str(candidate) if candidate.exists() else None


TERRAFORM = _terraform()
needs_terraform = pytest.mark.skipif(TERRAFORM is None,
                                     reason="no terraform binary (scripts/install-terraform builds one)")


def _google_provider_mirror() -> Path | None:
    plugins = Path.home() / ".terraform.d" / "plugins"
    found = glob.glob(str(plugins / "registry.terraform.io/hashicorp/google/*/linux_amd64/terraform-provider-google_*"))
    return plugins if found else None


MIRROR = _google_provider_mirror()
needs_provider = pytest.mark.skipif(
    MIRROR is None, reason="the hashicorp/google provider is not in ~/.terraform.d/plugins (its registry is not "
                           "reachable here; scripts/install-terraform --google-provider builds it, 20+ min)")


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Terraform's environment: no version check, no prompts, providers only from the local mirror."""
    config = tmp_path_factory.mktemp("tfcli") / "terraform.rc"
    if MIRROR is not None:
        config.write_text('provider_installation {\n  filesystem_mirror {\n'
                          f'    path    = "{MIRROR}"\n    include = ["registry.terraform.io/hashicorp/google"]\n'
                          '  }\n}\n')
    else:
        config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0", TF_CLI_CONFIG_FILE=str(config),
               NO_COLOR="1")
    return env


def _tf(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    assert TERRAFORM is not None
    return subprocess.run([TERRAFORM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(r: subprocess.CompletedProcess) -> None:
    command = " ".join(map(str, r.args))
    assert r.returncode == 0, f"{command} failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"


@needs_terraform
def test_fmt(tf_env: dict[str, str]) -> None:
    _ok(_tf(["fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_DIR)], REPO, tf_env))


@needs_terraform
def test_template_renders_the_same_in_terraform_and_the_harness(tf_env: dict[str, str], tmp_path: Path) -> None:
    values = {"shoal_version": "0.1.0", "kubo_version": "v0.40.1",
              "shoal_package": "https://storage.googleapis.com/b/shoal-0.1.0-py3-none-any.whl"}
    hcl_values = ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    expression = f'templatefile("{harness.TEMPLATE}", {{ {hcl_values} }})'
    (tmp_path / "main.tf").write_text(f'output "script" {{\n  value = {expression}\n}}\n')
    _ok(_tf(["init", "-backend=false", "-no-color"], tmp_path, tf_env))
    _ok(_tf(["apply", "-auto-approve", "-no-color"], tmp_path, tf_env))
    r = _tf(["output", "-raw", "script"], tmp_path, tf_env)
    _ok(r)
    assert r.stdout == harness.render_template(harness.TEMPLATE.read_text(), values)
    script = tmp_path / "startup.sh"
    script.write_text(r.stdout)
    _ok(subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True))
    if shutil.which("shellcheck"):
        _ok(subprocess.run(["shellcheck", str(script)], capture_output=True, text=True))


@needs_terraform
def test_variable_validations(tf_env: dict[str, str], tmp_path: Path) -> None:
    shutil.copy(MODULE / "variables.tf", tmp_path / "variables.tf")
    (tmp_path / "tests").mkdir()
    shutil.copy(TF_DIR / "test" / "variables.tftest.hcl", tmp_path / "tests" / "variables.tftest.hcl")
    _ok(_tf(["init", "-backend=false", "-no-color"], tmp_path, tf_env))
    r = _tf(["test", "-no-color"], tmp_path, tf_env)
    _ok(r)
    assert "0 failed" in r.stdout and "skipped" not in r.stdout, r.stdout


@pytest.fixture(scope="module")
def tf_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of terraform/ (init writes .terraform/ and lock files; the repo stays clean)."""
    dest = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(TF_DIR, dest, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    return dest


@needs_terraform
@needs_provider
@pytest.mark.parametrize("root", ["modules/shoal-cluster", "examples/small", "examples/large"])
def test_validate(root: str, tf_copy: Path, tf_env: dict[str, str]) -> None:
    cwd = tf_copy / root
    _ok(_tf(["init", "-backend=false", "-no-color"], cwd, tf_env))
    r = _tf(["validate", "-json", "-no-color"], cwd, tf_env)
    result = json.loads(r.stdout)
    assert result["valid"] and result["error_count"] == 0 and result["warning_count"] == 0, r.stdout


@needs_terraform
@needs_provider
def test_module_plans_against_a_mock_provider(tf_copy: Path, tf_env: dict[str, str]) -> None:
    cwd = tf_copy / "modules" / "shoal-cluster"
    _ok(_tf(["init", "-backend=false", "-no-color"], cwd, tf_env))
    r = _tf(["test", "-no-color"], cwd, tf_env, timeout=600)
    _ok(r)
    assert "0 failed" in r.stdout and "skipped" not in r.stdout, r.stdout


def test_metadata_keys_agree() -> None:
    """What main.tf sets, what the startup script reads and what the harness serves agree."""
    main_tf = (MODULE / "main.tf").read_text()
    script = harness.TEMPLATE.read_text()
    key = r'"(shoal-[a-z0-9-]+|enable-guest-attributes|enable-oslogin|startup-script)"\s*='
    set_by_module = set(re.findall(key, main_tf))
    set_by_module.discard("shoal-cluster")  # a label, not metadata
    limit_keys = {f"shoal-limit-{k}" for k in ("total-cpu", "total-memory", "total-disk", "job-cpu", "job-memory",
                                                "job-disk")}
    assert '"shoal-limit-${replace(k, "_", "-")}"' in main_tf  # limits: one key per map entry
    read_by_script = set(re.findall(r"\battr (shoal-[a-z0-9-]+)", script))
    required_by_script = set(re.findall(r"\battr (shoal-[a-z0-9-]+)\)", script))  # no default given
    assert 'attr "shoal-limit-$flag"' in script
    assert read_by_script - {"shoal-bootstrap-multiaddr"} <= set_by_module, read_by_script - set_by_module
    assert required_by_script == {"shoal-role", "shoal-bootstrap-instance", "shoal-network-key"}, required_by_script
    assert set_by_module - {"startup-script"} - read_by_script == {"enable-guest-attributes", "enable-oslogin"}
    cluster = harness.Cluster(Path("/nonexistent"), Path("/nonexistent"))
    cluster.define_vms()
    for vm in cluster.vms:
        served = set(vm.attributes)
        assert served - limit_keys <= set_by_module, served - set_by_module
        assert served & limit_keys, "the harness passes limits too"


def test_network_key_is_generated_wired_and_never_committed() -> None:
    """Every node gets the cluster's one network key from its metadata and serves with it; the
    key is made by Terraform at apply time (or given as a variable), never written in the repo."""
    main_tf = (MODULE / "main.tf").read_text()
    script = harness.TEMPLATE.read_text()
    # made at apply time from random UUIDs, kept once made, overridable, in every node's metadata
    made = r'resource "terraform_data" "network_key" \{\s*input\s*=\s*sha256\("\$\{uuid\(\)\}\$\{uuid\(\)\}"\)'
    assert re.search(made, main_tf), "the key is generated by terraform_data from uuid()"
    assert "ignore_changes = [input]" in main_tf
    assert "network_key = coalesce(var.network_key, terraform_data.network_key.output)" in main_tf
    assert '"shoal-network-key"       = local.network_key' in main_tf
    assert main_tf.count("local.common_metadata") >= 2  # the bootstrap and the compute template
    variables = (MODULE / "variables.tf").read_text()
    block = variables[variables.index('variable "network_key"'):]
    block = block[: block.index("\n}\n")]
    assert "sensitive   = true" in block and "default     = null" in block
    outputs = (MODULE / "outputs.tf").read_text()
    block = outputs[outputs.index('output "network_key"'):]
    assert "sensitive   = true" in block[: block.index("\n}\n")]
    # the startup script requires it, checks it, writes it for the node's user only, passes it
    assert "NETWORK_KEY=$(attr shoal-network-key)" in script
    assert "[[ $NETWORK_KEY =~ ^[0-9a-f]{64}$ ]] || die" in script
    assert ("(umask 077; printf '/key/swarm/psk/1.0.0/\\n/base16/\\n%s\\n' \"$NETWORK_KEY\" "
            "> \"$ETC/network.key.tmp\")") in script
    assert 'args="$args --network-key $ETC/network.key"' in script
    assert not re.search(r"log[^\n]*NETWORK_KEY", script), "the key is never logged"
    # nothing that looks like a key is committed under terraform/ (tests' fixed keys aside), and
    # what Terraform writes (state, tfvars) is ignored by git
    tracked = subprocess.run(["git", "ls-files", "terraform"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked
    for name in tracked:
        if name.endswith(".tftest.hcl"):
            continue
        text = (REPO / name).read_text(errors="replace")
        key_like = r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])"
        assert not re.search(key_like, text), f"{name} holds a 64-hex-digit value"
    written = ["terraform/examples/small/terraform.tfstate", "terraform/examples/small/terraform.tfvars"]
    ignored = subprocess.run(["git", "check-ignore", *written], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == written, "terraform state and tfvars are git-ignored"


def test_kubo_version_is_the_one_scripts_install_kubo_builds() -> None:
    """Storage computes CIDs by the Kubo that scripts/install-kubo builds (v0.40's HAMT sharding rule):
    the cluster's Kubo is that version, so the CIDs its nodes report are the ones `shoal get` checks."""
    built = re.search(r"^KUBO_VERSION=\$\{KUBO_VERSION:-(v[0-9.]+)\}$", (REPO / "scripts" / "install-kubo").read_text(),
                      re.M)
    assert built, "scripts/install-kubo pins KUBO_VERSION"
    variables = (MODULE / "variables.tf").read_text()
    block = variables[variables.index('variable "kubo_version"'):]
    block = block[: block.index("\n}\n")]
    default = re.search(r'^  default\s*=\s*"([^"]+)"', block, re.M)
    assert default and default.group(1) == built.group(1), (default and default.group(1), built.group(1))
    for name in ("examples/large/main.tf", "examples/small/main.tf", "modules/shoal-cluster/tests/cluster.tftest.hcl"):
        found = re.findall(r"kubo_version\s*=\s*\"([^\"]+)\"|KUBO_VERSION='([^']+)'", (TF_DIR / name).read_text())
        assert {a or b for a, b in found} <= {built.group(1)}, (name, found)


def test_startup_script_installs_node_new_enough_for_the_sandbox() -> None:
    """The python engine starts Node.js with its permission model (Node >= MIN_NODE; Debian 12 has 18):
    a node whose Node.js is older installs NodeSource's, from its signed apt repo, with its own npm."""
    from executors.runtime_install import MIN_NODE

    script = harness.render_template(harness.TEMPLATE.read_text(),
                                     {"shoal_version": "0.1.0", "kubo_version": "v0.40.1", "shoal_package": "x"})
    major = re.search(r"^NODE_MAJOR=([0-9]+)\b", script, re.M)
    assert major and int(major.group(1)) >= MIN_NODE >= 20
    body = re.search(r"^install_node\(\) \{\n(.*?)^\}$", script, re.M | re.S)
    assert body, "the script has an install_node function"
    node = body.group(1)
    assert re.search(r'\[ "\$have" -ge "\$NODE_MAJOR" \]', node), "a Node.js older than NODE_MAJOR is replaced"
    assert "curl -fsSL --retry 5 https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key" in node
    assert "gpg --batch --yes --dearmor -o /usr/share/keyrings/nodesource.gpg" in node
    assert ('"deb [signed-by=/usr/share/keyrings/nodesource.gpg] https://deb.nodesource.com/node_$NODE_MAJOR.x '
            'nodistro main"') in node
    assert "apt_ready=0\n  apt_install nodejs\n" in node
    engines = re.search(r"^install_engines\(\) \{\n(.*?)^\}$", script, re.M | re.S)
    assert engines and "\n  install_node\n" in engines.group(1)
    # NodeSource's nodejs ships npm and conflicts with Debian's
    assert not re.search(r"apt_install[^\n]*\bnpm\b", script)
