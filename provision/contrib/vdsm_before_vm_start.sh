#!/bin/sh
# oVirt VDSM hook: install as /usr/libexec/vdsm/hooks/before_vm_start/50_ivchan
# (mode 0755). VDSM passes the domain XML file in $_hook_domxml and reads it
# back after the hook; `inject` rewrites it atomically (temp file + fsync +
# rename) and is idempotent.
set -e
exec /usr/bin/ivchan-provision inject "$_hook_domxml"
