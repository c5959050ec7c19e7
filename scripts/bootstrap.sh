#!/usr/bin/env bash
# Aegis bootstrap: everything the project needs on a fresh Debian bookworm machine of
# this kind, installed by the project itself. Idempotent: a second run checks and
# returns in seconds.
#   - system packages (apt) for the lab nodes, eBPF builds and nftables
#   - a project-local virtualenv (.venv) with the pinned Python packages
#     (requirements.txt), the agent and controller packages and the lab (editable)
#   - a collections path (.state/collections) whose aegis/fleet is this checkout
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
started=${EPOCHREALTIME/./}
say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the lab creates bridges, containers and BPF programs"
grep -q 'VERSION_CODENAME=bookworm' /etc/os-release \
  || die "Aegis's lab expects Debian bookworm (found: $(. /etc/os-release; echo "$PRETTY_NAME"))"

# --- system packages -------------------------------------------------------------
APT_PACKAGES=(
  # lab nodes: rootful podman on runc, image built with debootstrap
  podman runc conmon containernetworking-plugins debootstrap zstd make
  iproute2 openssh-client util-linux ca-certificates git
  # eBPF toolchain (libbpf CO-RE) and the second enforcement path
  clang llvm bpftool libbpf-dev nftables python3-nftables
  # VM nodes for kernel-level checks (TCG emulation), disks built without loop mounts
  qemu-system-x86 qemu-utils e2fsprogs
  # controller state on PostgreSQL (the test fixture starts its own cluster on loopback)
  postgresql
  # the operator console's browser tests (Playwright drives /usr/bin/chromium)
  chromium
  # fallback interpreter for the virtualenv when no python3.11 with venv is present
  python3-venv
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >/dev/null
else
  say "system packages: all ${#APT_PACKAGES[@]} present"
fi

# --- terraform -----------------------------------------------------------------------
export TF_CLI_CONFIG_FILE="$repo/terraform/cli.tfrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
if ! command -v terraform >/dev/null 2>&1; then
  die "terraform not found on PATH. Aegis drives Terraform 1.x (seen: 1.11) from /usr/local/bin/terraform; the Terraform registry and releases site are not reachable from here, so install the binary by your own channel and re-run"
fi
tfv=$(terraform version -json | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p')
case "$tfv" in 1.*) say "terraform $tfv" ;; *) die "terraform $tfv found; Aegis needs Terraform 1.x" ;; esac

# --- python virtualenv ------------------------------------------------------------------
pick_python() {
  for cand in python3.11 python3 /usr/bin/python3.11; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}
py=$(pick_python) || die "no Python 3.11 with venv/ensurepip found (Debian: apt-get install python3-venv)"
stamp_src=$( { "$py" -c 'import sys; print(sys.version)'; cat requirements.txt protocol/pyproject.toml agent/pyproject.toml controller/pyproject.toml lab/pyproject.toml; } | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.aegis-stamp 2>/dev/null)" = "$stamp_src" ]; then
  say "virtualenv .venv up to date"
else
  say "creating .venv with $py and installing requirements.txt (about 30 s)"
  rm -rf .venv
  "$py" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -e ./protocol -e ./agent -e ./controller -e ./lab 2>&1 \
    | { grep -v '^WARNING: Location' || true; } >&2
  .venv/bin/python -c 'import ansible, aegis_controller, aegis_agent, aegis_protocol, aegis_lab' \
    || die "virtualenv install incomplete; see the pip output above"
  echo "$stamp_src" > .venv/.aegis-stamp
fi

# --- collections path: the source tree is aegis.fleet ------------------------------------
link=.state/collections/ansible_collections/aegis/fleet
mkdir -p "$(dirname "$link")"
[ "$(readlink "$link" 2>/dev/null)" = "$repo" ] || ln -sfn "$repo" "$link"

say "BPF objects: make -C bpf (bpf/build/*.bpf.o)"; make -C "$repo/bpf" -s

elapsed=$(( (${EPOCHREALTIME/./} - started) / 100000 ))
say "ready in $((elapsed / 10)).$((elapsed % 10)) s"
