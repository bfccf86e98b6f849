//! Real `openstack` CLI tests (filled in below).
