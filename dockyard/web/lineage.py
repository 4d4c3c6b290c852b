"""The lineage page: the graph around a table, a run or a definition, drawn in the browser
(static/lineage.js with the vendored cytoscape) from the same answer as GET /api/v1/lineage."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from dockyard.jobs.lineage import MAX_DEPTH
from dockyard.web.api.lineage import LineageQuery, answer
from dockyard.web.auth import page_login_required

bp = Blueprint("lineage", __name__, url_prefix="/lineage")


@bp.get("")
@page_login_required
def lineage_page() -> Any:
    """?namespace=&table= | ?run_id= | ?definition_id=, with &depth= (1..5)."""
    # A bad query is a ValidationError or an Invalid: the error page says which field.
    query = LineageQuery.model_validate(request.args.to_dict())
    graph = answer(query)
    anchor = next(node for node in graph.nodes if node.id == graph.anchor)
    anchor_args = {key: value for key, value in query.model_dump().items()
                   if value is not None and key not in ("depth", "limit")}
    return render_template("lineage.html", graph=graph.model_dump(mode="json"), anchor=anchor,
                           query=query, anchor_args=anchor_args,
                           depths=range(1, MAX_DEPTH + 1))
