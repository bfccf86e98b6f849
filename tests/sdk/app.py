"""An application driving Stratus through openstacksdk, the way a user's
program would: connect with clouds.yaml, create a key pair and a server,
wait for it, read its console, resize it, shelve and unshelve it, delete
both.

    OS_CLIENT_CONFIG_FILE=DATA/clouds.yaml OS_CLOUD=stratus python tests/sdk/app.py

Exits non-zero with a message on the first thing that does not behave.
crates/stratus/tests/it/sdk.rs runs it as part of the test suite.
"""

import base64
import os
import sys
import time

import openstack


def fail(msg):
    print(f"sdk app: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    conn = openstack.connect(cloud=os.environ.get("OS_CLOUD", "stratus"))
    image_name = os.environ.get("SDK_APP_IMAGE", "busybox")
    suffix = str(os.getpid())

    image = conn.image.find_image(image_name, ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.nano", ignore_missing=False)

    # A generated key pair: the private key comes back once.
    keypair = conn.compute.create_keypair(name=f"sdk-app-{suffix}")
    if not (keypair.private_key or "").startswith("-----BEGIN"):
        fail(f"generated key pair has no private key: {keypair.private_key!r}")
    if conn.compute.find_keypair(keypair.name) is None:
        fail("key pair not found after create")

    user_data = "#!/bin/sh\necho SDK-APP-USER-DATA-RAN\n"
    # The cloud layer, as Ansible's openstack.cloud.server uses it: no
    # network named (Nova's "auto" gives the project its own network),
    # wait=True, which insists the server ends up with an address (and,
    # with auto_ip, a floating IP when it has no public one).
    server = conn.create_server(
        name=f"sdk-app-{suffix}",
        image=image.id,
        flavor=flavor.id,
        key_name=keypair.name,
        meta={"app": "sdk"},
        userdata=user_data,
        wait=True,
        timeout=120,
    )
    fixed = [a["addr"] for net in (server.addresses or {}).values() for a in net
             if a.get("OS-EXT-IPS:type") == "fixed"]
    if not fixed:
        fail(f"server has no fixed address: {server.addresses}")
    floating = [a["addr"] for net in (server.addresses or {}).values() for a in net
                if a.get("OS-EXT-IPS:type") == "floating"]
    if not floating:
        fail(f"create_server(auto_ip=True) attached no floating IP: {server.addresses}")
    print(f"sdk app: server {server.name} has {fixed[0]} and floating {floating[0]}")
    server = conn.compute.get_server(server.id)
    if server.key_name != keypair.name or server.metadata.get("app") != "sdk":
        fail(f"server lost its key or metadata: {server.key_name} {server.metadata}")
    if server.flavor.get("original_name", server.flavor.get("name")) not in ("m1.nano", None) \
            and server.flavor.get("id") != flavor.id:
        fail(f"server has the wrong flavor: {server.flavor}")

    # The cloud layer sees it too (what Ansible and shade users call).
    names = [s.name for s in conn.list_servers(detailed=True)]
    if server.name not in names:
        fail(f"list_servers does not show {server.name}: {names}")

    # The console shows the guest's own output and the user-data script.
    deadline = time.time() + 60
    console = ""
    while time.time() < deadline:
        console = conn.compute.get_server_console_output(server)["output"]
        if "SDK-APP-USER-DATA-RAN" in console:
            break
        time.sleep(0.5)
    else:
        fail(f"console never showed the user-data output; it has: {console[-500:]!r}")

    # Grow it: resize to m1.micro, confirm; the flavor sticks.
    bigger = conn.compute.find_flavor("m1.micro", ignore_missing=False)
    conn.compute.resize_server(server, bigger.id)
    server = conn.compute.wait_for_server(server, status="VERIFY_RESIZE", wait=120)
    conn.compute.confirm_server_resize(server)
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120)
    if server.flavor.get("original_name", server.flavor.get("name")) != "m1.micro":
        fail(f"resize did not stick: {server.flavor}")

    # Park it and bring it back: shelve, unshelve.
    conn.compute.shelve_server(server)
    conn.compute.wait_for_server(server, status="SHELVED_OFFLOADED", wait=120)
    conn.compute.unshelve_server(server)
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120)

    conn.compute.stop_server(server)
    conn.compute.wait_for_server(server, status="SHUTOFF", wait=60)

    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=60)
    if conn.compute.find_server(server.id) is not None:
        fail("server still found after delete")
    conn.compute.delete_keypair(keypair)
    if conn.compute.find_keypair(keypair.name) is not None:
        fail("key pair still found after delete")
    print(f"sdk app: server {server.id} built, console read, resized, shelved, unshelved, stopped, deleted")


if __name__ == "__main__":
    main()
