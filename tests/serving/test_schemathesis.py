"""Schemathesis against the served OpenAPI schema: generated requests, valid and invalid, sent
over real HTTP to every operation; no answer may be a server error (5xx).

The operations are driven from one test with schemathesis' hypothesis strategies: its pytest
plugin (`from_fixture`) does not run under this pytest.
"""

from collections import Counter

import httpx
import numpy as np
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from serving import EmbeddingStore
from serving.app import Limits, create_app
from serving.candidates import CandidateLookup

LIMITS = Limits(max_ids=100, max_k=50, max_dim=64, max_body_bytes=16_384)
EXAMPLES = 50  # per operation, valid and invalid mixed; the whole run takes seconds


def test_generated_requests_get_no_server_errors(make_store, make_candidates, run_server,
                                                 tmp_path, capsys):
    # more vectors than max_k, so that every k the schema allows is answerable
    make_store(vectors=np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32))
    store = EmbeddingStore(tmp_path / "store", unknown="zeros")
    url = run_server(create_app(store, CandidateLookup(make_candidates()), LIMITS))
    assert httpx.get(f"{url}/health").status_code == 200
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    seen: Counter[str] = Counter()

    for operation in operations:
        @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                              operation.as_strategy(GenerationMode.NEGATIVE)))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(base_url=url, timeout=10)
            seen[f"{case.operation.label} {response.status_code}"] += 1
            case.validate_response(response, checks=[not_a_server_error])
            content_type = {k.lower(): v for k, v in response.headers.items()}["content-type"]
            assert content_type == ["application/json"], content_type  # JSON, errors too

        check()

    with capsys.disabled():
        print(f"\nschemathesis: {sum(seen.values())} requests; operation status: count "
              f"{dict(sorted(seen.items()))}")
    assert not [key for key in seen if key.split()[-1].startswith("5")]
    assert sum(seen.values()) >= 5 * 10
