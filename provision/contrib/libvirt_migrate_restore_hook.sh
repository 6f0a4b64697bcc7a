#!/bin/sh
# libvirt hook for the XML that libvirt lets a hook rewrite: on
# `migrate begin` (on the destination) and `restore begin`, libvirt passes the
# domain XML on stdin and uses the hook's stdout, if any, as the new XML.
# Install as /etc/libvirt/hooks/qemu.d/20-ivchan-filter (mode 0755) and restart
# libvirtd. Other operations print nothing, so the XML is left alone.
# (For preparing the region file at `prepare begin`, use
# `ivchan-provision install-hook` instead.)
# On a live migration's destination libvirt runs this filter (`migrate
# begin`), then `prepare begin`, where ivchan-provision's hook creates the
# destination's region and, for ivshmem-doorbell, checks that the ivshmem
# server's socket is there (start `ivchan-host-agent --doorbell SOCK
# --incoming` first). The filter only adds the device where it is missing,
# with the master role; it never changes a device the source already has,
# since the destination's device must match the source's.
case "$2 $3" in
    "migrate begin"|"restore begin")
        exec /usr/bin/ivchan-provision filter
        ;;
esac
cat >/dev/null
exit 0
