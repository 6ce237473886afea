// Draws an input only while another widget of its node holds a given value: an input declared with the
// option `stylekit_shown_with: {widget: value}` (nodes/specs.shown_with; Feature Fusion's gamma, temperature
// and content_kv act only under preset "custom"). A hidden widget keeps its value, which is saved and sent
// as before, so saved workflows and API prompts keep their widget order. Works in the frontends of
// ComfyUI 0.3.64 (1.27) and 0.33.0 (1.49): both skip a widget with `hidden` when drawing; 1.27 still lays
// it out, so a hidden widget also takes no height. A widget fed by a link stays shown, and a rule whose
// widget is fed by a link holds (its value arrives when the graph runs). The same rule in Python:
// nodes/specs.hidden_inputs.
import { app } from "../../../scripts/app.js";

const OPTION = "stylekit_shown_with";
const NO_HEIGHT = () => [0, -4]; // LiteGraph adds 4 px between widgets
const OWN_SIZE = Symbol("stylekit computeSize"); // a widget's own computeSize, put back when it shows again

function rulesOf(nodeData) {
  const rules = [];
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[section] ?? {})) {
      const when = Array.isArray(spec) ? spec[1]?.[OPTION] : undefined;
      if (when) rules.push({ name, when });
    }
  }
  return rules;
}

function linked(node, name) {
  return (node.inputs ?? []).some((input) => input.widget?.name === name && input.link != null);
}

// Shows or hides each ruled widget as its node's values say; true when any changed.
function apply(node, rules) {
  const widget = (name) => node.widgets?.find((w) => w.name === name);
  const holds = ([other, value]) => linked(node, other) || widget(other)?.value === value;
  let changed = false;
  for (const { name, when } of rules) {
    const w = widget(name);
    if (!w) continue;
    const shown = linked(node, name) || Object.entries(when).every(holds);
    if (shown === !w.hidden) continue;
    w.hidden = !shown;
    if (shown) {
      if (w[OWN_SIZE]) w.computeSize = w[OWN_SIZE];
      else delete w.computeSize;
    } else {
      if (Object.hasOwn(w, "computeSize")) w[OWN_SIZE] = w.computeSize;
      w.computeSize = NO_HEIGHT;
    }
    changed = true;
  }
  return changed;
}

// Applies the rules after a change by the user; the node grows or shrinks by what was shown or hidden,
// so a node the user made taller stays taller, and never gets smaller than its widgets need.
function update(node, rules) {
  if (node.__stylekitConfiguring) return; // loading: configure() restores the saved size, then onConfigure
  const before = node.computeSize()[1];
  if (!apply(node, rules)) return;
  const after = node.computeSize()[1];
  node.setSize([node.size[0], Math.max(after, node.size[1] + after - before)]);
  if (node.graph) node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "StyleKit.ShownWith",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const rules = rulesOf(nodeData);
    if (!rules.length) return;
    const watched = new Set(rules.flatMap(({ when }) => Object.keys(when)));

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const w of this.widgets ?? []) {
        if (!watched.has(w.name)) continue;
        const callback = w.callback;
        const node = this;
        w.callback = function () {
          const out = callback?.apply(this, arguments);
          update(node, rules);
          return out;
        };
      }
      update(this, rules); // a new node: its default values
      return result;
    };

    // configure() restores the size, then calls onConnectionsChange for each link, then restores the widget
    // values and calls onConfigure: nothing resizes in between, and onConfigure applies the saved values.
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function () {
      this.__stylekitConfiguring = true;
      try {
        return configure.apply(this, arguments);
      } finally {
        this.__stylekitConfiguring = false;
      }
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      apply(this, rules); // a loaded node keeps its saved size
      return result;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      if (this.graph) update(this, rules);
      return result;
    };
  },
});
