// Command go-publish publishes one message to a Tidings channel through the
// server HTTP API (the Centrifugo-compatible POST /api/publish), using only
// the Go standard library.
//
// Every option can come from a flag or from the environment:
//
//	-api-url  TIDINGS_API_URL  (default http://localhost:8000/api)
//	-api-key  TIDINGS_API_KEY  (required)
//	-channel  TIDINGS_CHANNEL  (required)
//	-message  TIDINGS_MESSAGE  (required)
//
// The message reaches subscribers as {"text": MESSAGE}; with -json the message
// is sent as the raw JSON document it contains.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// publishRequest is the body of POST /api/publish.
type publishRequest struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// apiError is the error object the server API returns for a failed command.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// publishResponse holds either a result or an error.
type publishResponse struct {
	Error  *apiError `json:"error"`
	Result *struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	} `json:"result"`
}

func envOr(name, fallback string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return fallback
}

func publish(ctx context.Context, apiURL, apiKey, channel string, data json.RawMessage) (*publishResponse, error) {
	body, err := json.Marshal(publishRequest{Channel: channel, Data: data})
	if err != nil {
		return nil, err
	}
	url := strings.TrimRight(apiURL, "/") + "/publish"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", apiKey)

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, errors.New("unauthorized: check the API key")
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("unexpected HTTP status %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	var out publishResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("cannot decode response %q: %w", raw, err)
	}
	return &out, nil
}

func main() {
	apiURL := flag.String("api-url", envOr("TIDINGS_API_URL", "http://localhost:8000/api"), "server API base URL (env TIDINGS_API_URL)")
	apiKey := flag.String("api-key", envOr("TIDINGS_API_KEY", ""), "server API key (env TIDINGS_API_KEY)")
	channel := flag.String("channel", envOr("TIDINGS_CHANNEL", ""), "channel to publish to (env TIDINGS_CHANNEL)")
	message := flag.String("message", envOr("TIDINGS_MESSAGE", ""), "message text (env TIDINGS_MESSAGE)")
	asJSON := flag.Bool("json", false, "send the message as a raw JSON document")
	flag.Parse()

	for name, value := range map[string]string{"api-key": *apiKey, "channel": *channel, "message": *message} {
		if value == "" {
			fmt.Fprintf(os.Stderr, "-%s is required (or set TIDINGS_%s)\n", name, strings.ToUpper(strings.ReplaceAll(name, "-", "_")))
			os.Exit(2)
		}
	}

	var data json.RawMessage
	if *asJSON {
		if !json.Valid([]byte(*message)) {
			fmt.Fprintln(os.Stderr, "-message is not valid JSON")
			os.Exit(2)
		}
		data = json.RawMessage(*message)
	} else {
		encoded, err := json.Marshal(map[string]string{"text": *message})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		data = encoded
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := publish(ctx, *apiURL, *apiKey, *channel, data)
	if err != nil {
		fmt.Fprintf(os.Stderr, "publish failed: %v\n", err)
		os.Exit(1)
	}
	if resp.Error != nil {
		fmt.Fprintf(os.Stderr, "publish failed: error %d: %s\n", resp.Error.Code, resp.Error.Message)
		os.Exit(1)
	}
	offset, epoch := uint64(0), "-"
	if resp.Result != nil {
		offset = resp.Result.Offset
		if resp.Result.Epoch != "" {
			epoch = resp.Result.Epoch
		}
	}
	fmt.Printf("published to %s: offset=%d epoch=%s\n", *channel, offset, epoch)
}
