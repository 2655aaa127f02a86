"""Zuora's Python SDK (zuora-sdk 3.21.0) pointed at the proxy, configured exactly as for Zuora
but for its host: `initialize()` fetches a token from the proxy's caller token endpoint, then
one `AccountsApi.get_account` call goes through the proxy to the mock Zuora.

Usage: get_account.py PROXY_URL ACCOUNT_KEY
Prints one JSON object (what the SDK got) on stdout; exits non-zero on any failure.
"""

import datetime
import json
import sys

from zuora_sdk import Configuration
from zuora_sdk.zuora_client import ZuoraClient

# What a service holding no Zuora credential would pass: any values do, the proxy drops them;
# the SDK only insists on the shape of Zuora's (a 36-character id, a secret of at most 42).
CALLER_CLIENT_ID = "00000000-0000-4000-8000-00000000c1e7"
CALLER_CLIENT_SECRET = "sdk-caller-secret-5c1f0e"
# Sent by the SDK as Zuora-Entity-Ids; the proxy replaces it with the rule's.
CALLER_ENTITY = "00000000-0000-4000-8000-000000000000"


def main() -> int:
    proxy_url, account_key = sys.argv[1], sys.argv[2]
    client = ZuoraClient(
        client_id=CALLER_CLIENT_ID,
        client_secret=CALLER_CLIENT_SECRET,
        env=None,
        config=Configuration(host=proxy_url),
    )
    # Its retries would make a refused token call slow, not fail: fail at once instead.
    client.set_retry_config(max_retries=1, retry_base_delay=1)
    # initialize() prints a failure and carries on without a token: check what it got.
    client.initialize()
    try:
        if client.token["access_token"] is None:
            print(f"initialize() got no token: {client.get_token_info()}", file=sys.stderr)
            return 1
        expires_in = (client.token["expires_at"] - datetime.datetime.now()).total_seconds()
        client.set_entity_id(CALLER_ENTITY)
        account = client.accounts_api().get_account(account_key)
    finally:
        client.stop_auto_auth()
    print(
        json.dumps(
            {
                "access_token": client.token["access_token"],
                "expires_in_s": expires_in,
                "type": type(account).__name__,
                "success": account.success,
                "account_number": account.basic_info.account_number,
                "account_name": account.basic_info.name,
                "balance": account.metrics.balance,
                "bill_to_city": account.bill_to_contact.city,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
