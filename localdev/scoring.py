"""Score rows through the emulated predictive services (RRS), as a client of the web service would."""

from __future__ import annotations

import requests


def classic_score(info: dict, api_key: str, rows: list[dict]) -> list[float]:
    """Score through the classic endpoint's RRS at the ApiLocation its management API reports."""
    headers = {"Authorization": f"Bearer {api_key}"}
    endpoint = requests.get(info["classic_endpoint_url"], headers=headers, timeout=10)
    endpoint.raise_for_status()
    names = list(rows[0])
    body = {
        "Inputs": {"input1": {"ColumnNames": names, "Values": [[r[n] for n in names] for r in rows]}},
        "GlobalParameters": {},
    }
    response = requests.post(
        f"{endpoint.json()['ApiLocation']}/execute",
        params={"api-version": "2.0", "details": "true"},
        headers=headers,
        json=body,
        timeout=10,
    )
    response.raise_for_status()
    value = response.json()["Results"]["output1"]["value"]
    column = value["ColumnNames"].index("Scored Probabilities")
    return [float(v[column]) for v in value["Values"]]


def arm_score(info: dict, api_key: str, rows: list[dict]) -> list[float]:
    """Score through the ARM web service's RRS (swagger format), found from its swaggerLocation."""
    token = requests.get(
        info["identity_endpoint"],
        params={"api-version": "2019-08-01", "resource": "https://management.azure.com"},
        headers={"X-IDENTITY-HEADER": info["identity_header"]},
        timeout=10,
    ).json()["access_token"]
    definition = requests.get(
        info["url"] + info["arm_resource_id"],
        params={"api-version": "2017-01-01"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    definition.raise_for_status()
    execute = definition.json()["properties"]["swaggerLocation"].replace("/swagger.json", "/execute")
    response = requests.post(
        execute,
        params={"api-version": "2.0", "format": "swagger"},
        headers={"Authorization": f"Bearer {api_key}"},
        json={"Inputs": {"input1": rows}},
        timeout=10,
    )
    response.raise_for_status()
    return [float(r["Scored Probabilities"]) for r in response.json()["Results"]["output1"]]
