// taskgate's Swagger UI set-up: loads the gateway's own OpenAPI document and,
// when the browser holds taskgate's cookies, echoes the CSRF cookie in the
// `x-csrf-token` header so "Try it out" works for cookie sessions too.
window.onload = function () {
  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)tg_csrf=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : null;
  }
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    withCredentials: true,
    requestInterceptor: function (request) {
      var token = csrfToken();
      if (token) {
        request.headers["x-csrf-token"] = token;
      }
      return request;
    },
  });
};
