"""Local HTTP servers that speak LLM providers' wire protocols, scripted by the tests.

The only fakes the LLM tests use: the far end of an external boundary we do not own.
The real LangChain provider clients (openai, anthropic, botocore underneath) talk to
them over loopback sockets, so our code and the provider libraries run for real; only
the answers are scripted. Each module builds one provider's replies in its wire format:
:mod:`providers.openai_wire` (chat completions, SSE streams), :mod:`providers.anthropic_wire`
(Messages, SSE events), :mod:`providers.bedrock_wire` (Converse JSON, ConverseStream in
AWS event-stream framing); :mod:`providers.server` serves them.
"""
