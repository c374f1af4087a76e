import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// omni's worker starts this with:
//   vite --host 127.0.0.1 --port <15173-15273> --strictPort
// Omniview (and omni's dashboard) on another origin import
// http://127.0.0.1:<port>/src/entry.ts, hence CORS.
export default defineConfig({
  plugins: [react()],
  server: {
    cors: true,
  },
});
