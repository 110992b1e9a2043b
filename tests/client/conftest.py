import pytest

from tests.client.contract_server import ContractServer


@pytest.fixture
def contract_server():
    """A server speaking the #9 conversation contract (see :mod:`tests.client.contract_server`)."""
    server = ContractServer().start()
    yield server
    server.stop()
