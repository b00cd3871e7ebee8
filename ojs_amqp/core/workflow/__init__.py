"""Workflows (ojs-workflows, conformance level 3) as pure, I/O-free rules.

`definition.parse_workflow` turns a POST body into a Workflow and its first jobs;
`advance` moves it when one of its jobs starts, finishes or when it is cancelled; `wire`
shapes it for GET. The engine stores and publishes what these functions return
(docs/adr/0005-workflows.md).
"""
