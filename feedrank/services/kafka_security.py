"""SASL/SCRAM and ACLs of the local brokers under ``kafka.security: scram``.

The passwords: one random one per principal in ``kafka.password_dir`` (mode 0600), created
when missing. The broker: its ``server.properties`` (mode 0600, it holds the broker's own
password) gets a SASL/SCRAM-SHA-512 client listener, a SASL/PLAIN controller listener
(KRaft controllers cannot check SCRAM, whose credentials live in the metadata they serve),
the StandardAuthorizer with no access without an ACL, and the super users. The SCRAM
credentials of every principal are written into the metadata when the storage is formatted
(``kafka-storage format --add-scram``); the ACLs of :func:`feedrank.config.kafka_access` are
synchronised on every ``make up`` through Kafka's admin API.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from feedrank.config import KAFKA_PRINCIPALS, KAFKA_SUPER_USERS, Settings, kafka_access
from feedrank.errors import FeedrankError
from feedrank.services.process import log, say

if TYPE_CHECKING:
    from kafka import KafkaAdminClient

# The principals whose SCRAM credentials a formatted storage holds (written when formatting).
USERS_STAMP = "scram-users"


def ensure_passwords(settings: Settings) -> None:
    """Create a random password file (0600) for every principal that has none."""
    created = []
    for principal in KAFKA_PRINCIPALS:
        path = settings.kafka.password_file(principal)
        if path.is_file() and path.read_text().strip():
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        created.append(principal)
    if created:
        say(f"created Kafka passwords for {', '.join(created)} in {settings.kafka.password_dir}")


def _user(settings: Settings, principal: str) -> str:
    return settings.kafka.username_prefix + principal


def listener_values(settings: Settings) -> dict[str, str]:
    """The listener and security lines of server.properties.template for ``kafka.security``."""
    if settings.kafka.security == "none":
        return {
            "client_listener": "PLAINTEXT",
            "protocol_map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "security": "# kafka.security: none (no authentication, no authorization)",
        }
    broker = _user(settings, "broker")
    password = settings.kafka.password("broker")
    supers = ";".join(f"User:{_user(settings, p)}" for p in KAFKA_SUPER_USERS)
    lines = [
        "# kafka.security: scram (rendered by feedrank/services/kafka_security.py)",
        "listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{broker}" password="{password}";',
        # PLAIN's users are this JAAS line: only the brokers may reach the controllers.
        "listener.name.controller.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{broker}" password="{password}" user_{broker}="{password}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users={supers}",
    ]
    return {
        "client_listener": "CLIENT",
        "protocol_map": "CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT",
        "security": "\n".join(lines),
    }


def protect(config: Path) -> None:
    """Make ``config`` (about to be rendered with a password in it) readable by its owner only."""
    config.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(config, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(config, 0o600)


def format_arguments(settings: Settings, folder: Path) -> list[str]:
    """``@<argfile>`` carrying ``--add-scram`` for every principal, or [] without security.

    The passwords go through a 0600 argument file that java expands, never the command line
    (which ``ps`` shows to every user); the caller deletes it after the format.
    """
    if settings.kafka.security == "none":
        return []
    argfile = folder / "format.args"
    protect(argfile)
    argfile.write_text(
        "".join(
            f"--add-scram\nSCRAM-SHA-512=[name={_user(settings, p)},"
            f"password={settings.kafka.password(p)}]\n"
            for p in KAFKA_PRINCIPALS
        )
    )
    return [f"@{argfile}"]


def formatted(settings: Settings, folder: Path, succeeded: bool) -> None:
    """Delete the argument file; after a format that succeeded, record which principals the
    node's fresh storage holds credentials for."""
    (folder / "format.args").unlink(missing_ok=True)
    if succeeded and settings.kafka.security == "scram":
        (folder / USERS_STAMP).write_text("\n".join(KAFKA_PRINCIPALS) + "\n")


def check_users(settings: Settings, folder: Path) -> None:
    """Refuse to start a secured broker on storage formatted without every principal.

    Raises:
        FeedrankError: one line naming the storage and the missing principals.
    """
    if settings.kafka.security == "none":
        return
    stamp = folder / USERS_STAMP
    held = set(stamp.read_text().split()) if stamp.is_file() else set()
    missing = [p for p in KAFKA_PRINCIPALS if p not in held]
    if missing:
        raise FeedrankError(
            f"Kafka storage in {folder} was formatted without SCRAM users for "
            f"{', '.join(missing)}: stop Kafka and remove that folder (its topics are lost) "
            "or use another paths.home"
        )


def sync_acls(settings: Settings, admin: KafkaAdminClient) -> None:
    """Make the brokers' ACLs exactly those of :func:`kafka_access` (as ``admin``)."""
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )

    if settings.kafka.security == "none":
        return
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    wanted = {
        (f"User:{_user(settings, principal)}", kind, name, op.upper())
        for principal, access in kafka_access(settings.serving.group_id).items()
        for kind, name, op in access.bindings()
    }
    every = ACLFilter(
        principal=None,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )

    def described() -> tuple[list[ACL], set[tuple[str, str, str, str]]]:
        acls, error = admin.describe_acls(every)
        if error.errno != 0:
            raise FeedrankError(f"describing Kafka ACLs failed: {error}")
        allowed = {
            (a.principal, a.resource_pattern.resource_type.name.lower(),
             a.resource_pattern.resource_name, a.operation.name)
            for a in acls
            if a.resource_pattern.pattern_type == ACLResourcePatternType.LITERAL
            and a.permission_type == ACLPermissionType.ALLOW and a.host == "*"
        }  # fmt: skip
        return acls, allowed

    existing, have = described()
    extra = [a for a in existing if
             (a.principal, a.resource_pattern.resource_type.name.lower(),
              a.resource_pattern.resource_name, a.operation.name) not in wanted
             or a.permission_type != ACLPermissionType.ALLOW or a.host != "*"]  # fmt: skip
    missing = sorted(wanted - have)
    if missing:
        result = admin.create_acls(
            [
                ACL(
                    principal=principal,
                    host="*",
                    operation=ACLOperation[op],
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=ResourcePattern(
                        kinds[kind], name, ACLResourcePatternType.LITERAL
                    ),
                )
                for principal, kind, name, op in missing
            ]
        )
        if result["failed"]:
            raise FeedrankError(f"creating Kafka ACLs failed: {result['failed'][0]}")
        log.info("created %d Kafka ACLs", len(missing))
    if extra:
        admin.delete_acls(
            [
                ACLFilter(
                    principal=a.principal,
                    host=a.host,
                    operation=a.operation,
                    permission_type=a.permission_type,
                    resource_pattern=ResourcePatternFilter(
                        a.resource_pattern.resource_type,
                        a.resource_pattern.resource_name,
                        a.resource_pattern.pattern_type,
                    ),
                )
                for a in extra
            ]
        )
        log.info("deleted %d Kafka ACLs not in feedrank.config.kafka_access", len(extra))
    # The brokers apply ACL changes from the metadata log a moment after the controller
    # accepted them: wait, so that a client started next finds its rights.
    deadline = time.monotonic() + settings.kafka.ready_timeout_s
    while (missing or extra) and described()[1] != wanted:
        if time.monotonic() >= deadline:
            raise FeedrankError("the brokers did not apply feedrank's Kafka ACLs in time")
        time.sleep(0.1)
