// The lineage page: draws the graph of #lineage-graph's data-graph (the answer of
// GET /api/v1/lineage) with cytoscape and its dagre layout, data flowing left to right.
// A tap on a node opens its page. The instance is window.dockyardLineage.
(function () {
  'use strict';

  const KIND_COLOURS = {
    table: '#0d6efd', batch: '#6c757d', run: '#198754', definition: '#6f42c1',
  };
  const RUN_STATUS_COLOURS = {
    QUEUED: '#adb5bd', PENDING: '#0dcaf0', RUNNING: '#0d6efd', SUCCEEDED: '#198754',
    FAILED: '#dc3545', CANCELLED: '#212529', TIMED_OUT: '#ffc107',
  };
  const EDGE_COLOURS = {
    wrote: '#198754', in: '#adb5bd', read: '#0d6efd', made: '#6f42c1',
    fires_on: '#fd7e14', after: '#6f42c1',
  };

  function elements(graph) {
    const nodes = graph.nodes.map(function (node) {
      const colour = node.kind === 'run' && node.status
        ? (RUN_STATUS_COLOURS[node.status] || KIND_COLOURS.run)
        : (node.url ? KIND_COLOURS[node.kind] : '#dee2e6');
      return {
        group: 'nodes',
        classes: [node.kind, node.id === graph.anchor ? 'anchor' : '',
          node.url ? 'linked' : 'unlinked'].join(' '),
        data: {
          id: node.id, kind: node.kind, url: node.url || '', colour: colour,
          label: node.status && node.kind !== 'batch' ? node.label + '\n' + node.status
            : node.label,
        },
      };
    });
    const edges = graph.edges.map(function (edge, index) {
      return {
        group: 'edges',
        classes: edge.kind,
        data: {
          id: 'edge-' + index, source: edge.source, target: edge.target, kind: edge.kind,
          colour: EDGE_COLOURS[edge.kind] || '#adb5bd',
        },
      };
    });
    return nodes.concat(edges);
  }

  const STYLE = [
    {
      selector: 'node',
      style: {
        'background-color': 'data(colour)', 'label': 'data(label)', 'font-size': 10,
        'color': '#212529', 'text-valign': 'bottom', 'text-halign': 'center',
        'text-margin-y': 2, 'text-wrap': 'wrap', 'text-max-width': 160,
        'width': 22, 'height': 22,
        // Labels of a zoomed-out graph of hundreds of nodes would be a grey blur.
        'min-zoomed-font-size': 6,
      },
    },
    { selector: 'node.table', style: { 'shape': 'round-rectangle', 'width': 34, 'height': 22 } },
    { selector: 'node.batch', style: { 'shape': 'ellipse', 'width': 14, 'height': 14 } },
    { selector: 'node.run', style: { 'shape': 'diamond', 'width': 24, 'height': 24 } },
    { selector: 'node.definition', style: { 'shape': 'hexagon', 'width': 30, 'height': 24 } },
    { selector: 'node.unlinked', style: { 'color': '#6c757d', 'font-style': 'italic' } },
    {
      selector: 'node.anchor',
      style: { 'border-width': 4, 'border-color': '#fd7e14', 'font-weight': 'bold' },
    },
    {
      selector: 'edge',
      style: {
        'width': 1.2, 'curve-style': 'bezier', 'line-color': 'data(colour)', 'opacity': 0.7,
        'target-arrow-color': 'data(colour)', 'target-arrow-shape': 'triangle',
        'arrow-scale': 0.7,
      },
    },
    { selector: 'edge.read', style: { 'line-style': 'dashed' } },
    { selector: 'edge.in', style: { 'width': 0.8 } },
  ];

  // A level of many nodes (a run that wrote a partition per day for a year) would be one
  // column taller than any screen: such a level is wrapped into a block of columns, and the
  // levels right of it move over to make room.
  const ROWS_BEFORE_WRAPPING = 16;
  const COLUMN_WIDTH = 170;
  const ROW_HEIGHT = 34;

  function wrapTallLevels(cy) {
    const levels = new Map();
    cy.nodes().forEach(function (node) {
      const x = Math.round(node.position('x'));
      if (!levels.has(x)) levels.set(x, []);
      levels.get(x).push(node);
    });
    let shift = 0;
    Array.from(levels.keys()).sort(function (a, b) { return a - b; }).forEach(function (x) {
      const level = levels.get(x);
      if (level.length <= ROWS_BEFORE_WRAPPING) {
        if (shift) level.forEach(function (node) { node.shift('x', shift); });
        return;
      }
      level.sort(function (a, b) { return a.position('y') - b.position('y'); });
      const columns = Math.ceil(Math.sqrt(level.length / 3));
      const rows = Math.ceil(level.length / columns);
      const middle = level.reduce(function (sum, node) { return sum + node.position('y'); }, 0)
        / level.length;
      level.forEach(function (node, index) {
        node.position({
          x: x + shift + Math.floor(index / rows) * COLUMN_WIDTH,
          y: middle + (index % rows - (rows - 1) / 2) * ROW_HEIGHT,
        });
      });
      shift += (columns - 1) * COLUMN_WIDTH;
    });
  }

  function draw(container) {
    const graph = JSON.parse(container.dataset.graph);
    const cy = window.cytoscape({
      container: container,
      elements: elements(graph),
      style: STYLE,
      minZoom: 0.05, maxZoom: 4,
    });
    const layout = cy.layout({
      name: 'dagre', rankDir: 'LR', nodeSep: 12, rankSep: 90, edgeSep: 6,
      ranker: 'network-simplex', nodeDimensionsIncludeLabels: true, fit: false,
    });
    layout.one('layoutstop', function () {
      wrapTallLevels(cy);
      cy.fit(undefined, 20);
    });
    layout.run();
    cy.on('tap', 'node', function (event) {
      const url = event.target.data('url');
      if (url) window.location.assign(url);
    });
    cy.on('mouseover', 'node.linked', function () { container.classList.add('lineage-pointer'); });
    cy.on('mouseout', 'node', function () { container.classList.remove('lineage-pointer'); });
    const fit = document.getElementById('lineage-fit');
    if (fit) fit.addEventListener('click', function () { cy.fit(undefined, 20); });
    // Laid out and fitted: tests and the curious may use it from here on.
    window.dockyardLineage = cy;
  }

  function start() {
    const container = document.getElementById('lineage-graph');
    if (container && window.cytoscape) draw(container);
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
