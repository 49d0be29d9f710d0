#!/usr/bin/env bash
# Debian packages the test suite needs: chromium (UI tests through Playwright) and redis-server
# (the Redis job-queue test). Installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail
packages=(chromium redis-server)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
