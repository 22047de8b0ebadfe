// Checks pages: small enhancements; everything works without them (the progress poll is htmx's).
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-print]");
  if (button) window.print();
});
