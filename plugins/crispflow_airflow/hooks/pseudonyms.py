"""The pseudonym keys (crispflow.governance.pseudonyms) from an Airflow connection or secrets backend: its password
holds `hk2:<base64url secret>,hk1:<base64url secret>`, the current key first. The keys never touch the lake,
a run's conf or XCom."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

from crispflow.governance.pseudonyms import PseudonymError, Pseudonymizer

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec


class PseudonymHook(BaseHook):
    """:param pseudonym_conn_id: the connection whose password holds the keys (default `crispflow_pseudonyms`)."""

    conn_name_attr = "pseudonym_conn_id"
    default_conn_name = "crispflow_pseudonyms"
    conn_type = "generic"
    hook_name = "crispflow pseudonym keys"

    def __init__(self, pseudonym_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.pseudonym_conn_id = pseudonym_conn_id

    def get_pseudonymizer(self) -> Pseudonymizer:
        """The keys as a Pseudonymizer; PseudonymError naming the connection (never its secret) otherwise."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        where = f"connection {self.pseudonym_conn_id!r}"
        try:
            conn = self.get_connection(self.pseudonym_conn_id)
        except AirflowNotFoundException:
            raise PseudonymError(f"{where}: not found; put the pseudonym keys (hk1:<base64url secret>) in its "
                                 "password, in an Airflow connection or secrets backend") from None
        if not conn.password:
            raise PseudonymError(f"{where}: its password is empty (expected hk1:<base64url secret>)")
        try:
            return Pseudonymizer.from_text(conn.password)
        except PseudonymError as exc:
            raise PseudonymError(f"{where}: {exc}") from None


def pseudonymizer_for(spec: PipelineSpec) -> Pseudonymizer | None:
    """The keys when `spec` stores pseudonyms (the connection must then exist), else None (nothing to hash)."""
    return PseudonymHook().get_pseudonymizer() if spec.pseudonymised_columns else None
