// SMART App Launch 2 for the NMS trend view (fhirclient does the OAuth 2 code flow with PKCE).
// - EHR launch: launch.html?iss=<FHIR base>&launch=<id> (the card's smart link as the EHR opens it)
// - standalone launch: launch.html?iss=<FHIR base>
// - development (nms-cds dev): no iss, or the open local FHIR server as iss: no authorization server
"use strict";

(function () {
  const status = document.getElementById("status");
  const params = new URLSearchParams(window.location.search);

  function fail(message) {
    status.textContent = message;
    status.className = "error";
  }

  function openServer(url, patientId) {
    status.textContent = "Opening patient " + patientId + " on the development FHIR server…";
    return FHIR.oauth2.authorize({ fhirServiceUrl: url, patientId: patientId, redirectUri: "index.html" });
  }

  function same(a, b) {
    return (a || "").replace(/\/+$/, "") === (b || "").replace(/\/+$/, "");
  }

  fetch("api/config", { headers: { Accept: "application/json" } })
    .then(function (r) {
      if (!r.ok) { throw new Error("the service answered " + r.status); }
      return r.json();
    })
    .then(function (cfg) {
      const iss = params.get("iss");
      const patient = params.get("patient");
      if (cfg.openFhirServer && (!iss || same(iss, cfg.openFhirServer))) {
        if (patient) { return openServer(cfg.openFhirServer, patient); }
        status.textContent = "No EHR launch.";
        const form = document.getElementById("patient-form");
        form.hidden = false;
        form.addEventListener("submit", function (event) {
          event.preventDefault();
          openServer(cfg.openFhirServer, document.getElementById("patient").value.trim());
        });
        return null;
      }
      if (!iss) {
        fail("Open this view from the EHR (SMART launch), or give the FHIR server: launch.html?iss=<FHIR base URL>.");
        return null;
      }
      return FHIR.oauth2.authorize({
        clientId: cfg.clientId,
        scope: cfg.scope,
        redirectUri: "index.html",
        pkceMode: "required",
      });
    })
    .catch(function (error) { fail("The launch failed: " + error.message); });
})();
