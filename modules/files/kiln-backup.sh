#!/bin/sh
# Back up the paths listed in /etc/kiln/backup-paths with restic.
# The repository password arrives as a systemd credential, never in the image.
set -eu
export RESTIC_PASSWORD_FILE="$CREDENTIALS_DIRECTORY/restic-password"
restic backup --files-from /etc/kiln/backup-paths --exclude-caches
restic forget --prune --keep-daily "${KEEP_DAILY:-7}" --keep-weekly "${KEEP_WEEKLY:-4}" --keep-monthly "${KEEP_MONTHLY:-6}"
