// The UI entry Omniview imports from the plugin's Vite server (`${devBase}/src/entry.ts`).
//
// Omniview's loader (ui/features/plugins/core/validation.ts, validatePluginExports) needs a named
// `plugin` export: an object with its routes, a `PluginWindow` from @omniviewdev/runtime in a real
// plugin (routes in `_routes`, read through its `Routes` getter) or a plain object with a `Routes`
// array, which is what this example uses so that it needs no Omniview package. The index route
// (path "") renders App.
import App from "./App";

export const plugin = {
  Routes: [{ path: "", Component: App }],
};

export default plugin;
