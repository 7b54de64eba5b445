// Vite settings for the demo page. The gateway serves dist/ under /demo/, so
// every asset URL is built relative to that base.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/demo/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Stable names keep the committed dist/ diff small between rebuilds.
    rollupOptions: {
      output: {
        entryFileNames: "assets/demo.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
  server: {
    // `npm run dev` proxies the API to a local gateway so the page can be
    // worked on with hot reload: gRPC-web calls go to /taskgate.*.
    proxy: {
      "/taskgate.": { target: process.env.TASKGATE_GATEWAY_URL ?? "http://127.0.0.1:8080", changeOrigin: true },
    },
  },
});
