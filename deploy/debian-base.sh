#!/bin/sh
# Makes a Debian 12 (bookworm) base image from a Debian mirror, for a host that reaches a Debian
# mirror but no container registry; needs mmdebstrap (apt-get install mmdebstrap) and podman or docker.
#   deploy/debian-base.sh [TAG]        default TAG localhost/edx-live-base:bookworm
#   podman build -f deploy/Containerfile --build-arg BASE=localhost/edx-live-base:bookworm -t edx-live .
# MIRROR and SECURITY_MIRROR (environment) name the mirrors; CONTAINER=docker uses docker.
set -eu
TAG=${1:-localhost/edx-live-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CONTAINER=${CONTAINER:-podman}
mmdebstrap --variant=minbase --include=ca-certificates bookworm - \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main" \
  | "$CONTAINER" import --change 'CMD ["/bin/bash"]' - "$TAG"
